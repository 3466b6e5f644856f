"""The API server as the agent reaches it: the official client's
configuration (kubeconfig or in-cluster, exec credential plugins), the raw
list and watch calls the reflectors make, and this node's Node object."""

from __future__ import annotations

import logging
from typing import Optional

from ..errors import PyipsetError, brief_text


def api_client(settings):
    """The official client's configuration and transport: the kubeconfig
    when given, else the pod's service account. No retries inside the
    client: the reflectors back off themselves. A kubeconfig whose exec
    credential plugin fails gives a client without credentials; the
    returned client's `credentials_problem` says why (None when fine), and
    configure() may be called again for it."""
    from kubernetes import client
    cfg = client.Configuration()
    problem = configure(settings, cfg)
    cfg.retries = False
    api = client.ApiClient(cfg)
    api.credentials_problem = problem
    return api


def configure(settings, cfg) -> Optional[str]:
    """Loads the kubeconfig (or the in-cluster configuration) into cfg: a
    UsageError if it cannot be read; what went wrong getting credentials
    (an exec plugin missing or failing), or None. The client reports that
    through the logging module's root logger and goes on without
    credentials: its records are taken here, not printed."""
    from kubernetes import config
    from ..errors import UsageError

    class Taken(logging.Handler):
        def __init__(self):
            super().__init__(logging.WARNING)
            self.messages = []

        def emit(self, record):
            self.messages.append(record.getMessage())
    root = logging.getLogger()
    taken, handlers = Taken(), root.handlers[:]
    root.handlers[:] = [taken]
    try:
        if settings.kubeconfig:
            config.load_kube_config(config_file=settings.kubeconfig, client_configuration=cfg)
        else:
            config.load_incluster_config(client_configuration=cfg)
    except (config.ConfigException, OSError, ValueError) as exc:
        where = f"--kubeconfig {brief_text(settings.kubeconfig)}" if settings.kubeconfig else \
            "the in-cluster service account (outside a cluster, give --kubeconfig)"
        raise UsageError(f"cannot configure the API client from {where}: {brief_text(str(exc))}") from None
    finally:
        root.handlers[:] = handlers
    if not taken.messages:
        return None
    return "no credentials from the kubeconfig's exec plugin: " + brief_text("; ".join(taken.messages))[:300]


def list_calls(api) -> dict:
    """resource -> call(**query) returning the raw response of a list or watch."""
    from kubernetes import client
    from ..model.crd import CRDS
    from .state import CLUSTER_POLICY_RESOURCES, KIND
    core, net, custom = client.CoreV1Api(api), client.NetworkingV1Api(api), client.CustomObjectsApi(api)
    methods = {"namespaces": core.list_namespace, "pods": core.list_pod_for_all_namespaces,
               "networkpolicies": net.list_network_policy_for_all_namespaces, "nodes": core.list_node}
    calls = {r: (lambda m: lambda **q: m(_preload_content=False, **q))(m) for r, m in methods.items()}
    from kubernetes.client.exceptions import ApiException

    def cluster_policies(plural: str, versions: tuple):
        """The list or watch at the first of the kind's apiVersions the server serves (a 404 from the last:
        none is)."""
        def call(**q):
            for i, api_version in enumerate(versions):
                group, _, version = api_version.partition("/")
                try:
                    return custom.list_cluster_custom_object(group, version, plural, _preload_content=False, **q)
                except ApiException as exc:
                    if exc.status != 404 or i == len(versions) - 1:
                        raise
        return call
    for resource in CLUSTER_POLICY_RESOURCES:
        calls[resource] = cluster_policies(resource, CRDS[KIND[resource][1]][0])
    calls["node"] = lambda name, **q: core.read_node(name, _preload_content=False, **q)
    return calls


class PodCIDRsUnknown(PyipsetError):
    """--deny-unknown-pod-ips without --pod-cidrs, and the Node says none (or cannot be read yet)."""


def node_pod_cidrs(call, name: str, timeout: tuple) -> tuple:
    """This node's pod CIDRs from its Node object (spec.podCIDRs, else spec.podCIDR)."""
    import ipaddress
    import json
    try:
        response = call(name, _request_timeout=timeout)
        node = json.loads(response.data)
    except Exception as exc:  # the client raises ApiException, urllib3 errors, OSError, ValueError
        status = getattr(exc, "status", None)
        why = brief_text(str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
        raise PodCIDRsUnknown(f"cannot read Node {name} for its pod CIDRs{f' (HTTP {status})' if status else ''}: "
                              f"{why}; will retry (or give --pod-cidrs)") from None
    spec = node.get("spec") or {}
    texts = spec.get("podCIDRs") or ([spec["podCIDR"]] if spec.get("podCIDR") else [])
    try:
        cidrs = tuple(ipaddress.ip_network(t) for t in texts)
    except (TypeError, ValueError) as exc:
        raise PodCIDRsUnknown(f"Node {name} spec.podCIDRs {brief_text(str(texts))}: {exc}") from None
    if not cidrs:
        raise PodCIDRsUnknown(f"Node {name} has no spec.podCIDRs (the CNI or IPAM does not set it): give --pod-cidrs "
                              "for --deny-unknown-pod-ips; will retry")
    return cidrs


def read_cluster(kubeconfig: str, page_size: int = 500, timeout: float = 30.0) -> list:
    """The namespaces, pods, NetworkPolicies, Nodes and cluster policies the
    API server holds, as manifests (kind and apiVersion set), read with
    paginated lists and nothing else (read-only: `pyipset diff
    --before-cluster`); a cluster-policy kind the server does not serve (no
    CRD) is none. A failure is one PyipsetError naming the resource and the
    server's answer."""
    import json
    from types import SimpleNamespace
    from kubernetes.client.exceptions import ApiException
    from .state import KIND, OPTIONAL, RESOURCES
    api = api_client(SimpleNamespace(kubeconfig=kubeconfig))
    if api.credentials_problem:
        raise PyipsetError(api.credentials_problem)
    calls = list_calls(api)
    out = []
    for resource in RESOURCES:
        api_version, kind = KIND[resource]
        token = None
        while True:
            query = {"limit": page_size, "_request_timeout": timeout}
            if token:
                query["_continue"] = token
            try:
                response = calls[resource](**query)
                body = json.loads(response.data)
            except ApiException as exc:
                if exc.status == 404 and resource in OPTIONAL:
                    break  # the API server does not serve this kind (its CRD is not installed)
                raise PyipsetError(f"reading {resource} from the cluster: HTTP {exc.status} "
                                   f"{brief_text(str(exc.reason))}: {brief_text(str(exc.body or ''))[:200]}") from None
            except (OSError, ValueError) as exc:
                raise PyipsetError(f"reading {resource} from the cluster: {brief_text(str(exc))}") from None
            for item in body.get("items") or []:
                if isinstance(item, dict):
                    item.setdefault("apiVersion", api_version)
                    item.setdefault("kind", kind)
                    out.append(item)
            token = (body.get("metadata") or {}).get("continue")
            if not token:
                break
    return out
