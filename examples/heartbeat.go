// Send killswitch heartbeats from a Go strategy: net/http over a UNIX socket.
// Usage: go run heartbeat.go [SOCKET] [INTERVAL] [COUNT]   e.g. go run heartbeat.go /run/killswitch/control.sock 1s 0
package main

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"strconv"
	"time"
)

func client(socket string) *http.Client {
	return &http.Client{
		Timeout: time.Second,
		Transport: &http.Transport{
			DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
				var d net.Dialer
				return d.DialContext(ctx, "unix", socket)
			},
		},
	}
}

func heartbeat(c *http.Client) (bool, error) {
	resp, err := c.Post("http://killswitch/heartbeat", "application/json", nil)
	if err != nil {
		return false, err
	}
	defer resp.Body.Close()
	return resp.StatusCode == http.StatusOK, nil
}

func main() {
	socket, interval, count := "/run/killswitch/control.sock", time.Second, 0
	if len(os.Args) > 1 {
		socket = os.Args[1]
	}
	if len(os.Args) > 2 {
		interval, _ = time.ParseDuration(os.Args[2])
	}
	if len(os.Args) > 3 {
		count, _ = strconv.Atoi(os.Args[3])
	}
	c := client(socket)
	for sent := 0; count == 0 || sent < count; sent++ {
		ok, err := heartbeat(c)
		switch {
		case err != nil:
			fmt.Fprintln(os.Stderr, "heartbeat failed:", err)
		case ok:
			fmt.Println("ok")
		default:
			fmt.Println("refused")
		}
		time.Sleep(interval)
	}
}
