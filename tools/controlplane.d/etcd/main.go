// etcd for the test control plane: the server of go.etcd.io/etcd/server/v3
// (its own command-line entry point), built from the Go module proxy by
// tools/controlplane. Nothing of ours runs here but this call.
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() {
	etcdmain.Main(os.Args)
}
