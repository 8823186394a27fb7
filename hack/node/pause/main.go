// Command pause holds a pod's namespaces open: it sleeps until SIGTERM or SIGINT and exits 0.
// It is the sandbox image of the test node (containerd's sandbox_image), built static.
package main

import (
	"os"
	"os/signal"
	"syscall"
)

func main() {
	stop := make(chan os.Signal, 1)
	signal.Notify(stop, syscall.SIGTERM, syscall.SIGINT)
	<-stop
}
