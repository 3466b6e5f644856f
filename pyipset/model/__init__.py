"""The cluster model: Kubernetes objects loaded, validated and typed."""

from .failclosed import fail_closed
from .loader import Limits, load, load_objects
from .objects import (Cluster, ContainerPort, IPBlock, Namespace, NetworkPolicy, Peer, Pod, PolicyRule, PortSpec,
                      Rejection)
from .selectors import LabelSelector, Requirement

__all__ = ["fail_closed", "Limits", "load", "load_objects", "Cluster", "ContainerPort", "IPBlock", "Namespace", "NetworkPolicy", "Peer", "Pod",
           "PolicyRule", "PortSpec", "Rejection", "LabelSelector", "Requirement"]
