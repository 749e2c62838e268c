// netcheck is the network check's test pod: a tiny HTTP server that names its pod
// and node, and a client that probes other pods, Services and cluster DNS from inside
// a pod (through the pod's own network namespace and resolv.conf). Standard library
// only, built static (CGO_ENABLED=0) by provision.artifacts; see docs/roles.md.
//
//	netcheck serve [-listen :8080]           answer GET / with {"pod","node","ip"}
//	netcheck get [-timeout 3s] URL           print the body of a 200 answer
//	netcheck resolve [-timeout 3s] NAME      print the addresses NAME resolves to
//	netcheck sweep [-timeout 3s] [-attempts 3] get:URL|resolve:NAME ...
//	                                         probe every target in parallel; one JSON
//	                                         line per target; exit 1 if any failed
//	netcheck version
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/signal"
	"sort"
	"strings"
	"sync"
	"syscall"
	"time"
)

var version = "dev"

// Identity is what the server answers and what sweep reports as its source.
type Identity struct {
	Pod  string `json:"pod"`
	Node string `json:"node"`
	IP   string `json:"ip"`
}

func identity() Identity {
	host, _ := os.Hostname()
	id := Identity{Pod: os.Getenv("POD_NAME"), Node: os.Getenv("NODE_NAME"), IP: os.Getenv("POD_IP")}
	if id.Pod == "" {
		id.Pod = host
	}
	return id
}

func usage() {
	fmt.Fprintln(os.Stderr, "usage: netcheck serve|get|resolve|sweep|version [flags] [args]")
	os.Exit(2)
}

func main() {
	if len(os.Args) < 2 {
		usage()
	}
	cmd, args := os.Args[1], os.Args[2:]
	var code int
	switch cmd {
	case "serve":
		code = serve(args)
	case "get", "resolve", "sweep":
		code = client(cmd, args)
	case "version", "-v", "--version":
		fmt.Printf("netcheck %s\n", version)
	default:
		usage()
	}
	os.Exit(code)
}

func serve(args []string) int {
	fs := flag.NewFlagSet("serve", flag.ExitOnError)
	listen := fs.String("listen", ":8080", "address to listen on")
	_ = fs.Parse(args)
	id := identity()
	body, _ := json.Marshal(id)
	body = append(body, '\n')
	mux := http.NewServeMux()
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) {
		_, _ = io.WriteString(w, "ok\n")
	})
	mux.HandleFunc("/", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write(body)
	})
	srv := &http.Server{Addr: *listen, Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	ln, err := net.Listen("tcp", *listen)
	if err != nil {
		fmt.Fprintf(os.Stderr, "netcheck: listen %s: %v\n", *listen, err)
		return 1
	}
	fmt.Fprintf(os.Stderr, "netcheck %s: pod %s on node %s serving on %s\n", version, id.Pod,
		id.Node, ln.Addr())
	stop := make(chan os.Signal, 1)
	signal.Notify(stop, syscall.SIGINT, syscall.SIGTERM)
	go func() {
		<-stop
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		_ = srv.Shutdown(ctx)
	}()
	if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
		fmt.Fprintf(os.Stderr, "netcheck: %v\n", err)
		return 1
	}
	return 0
}

// Result is one probe's outcome (one JSON line of sweep).
type Result struct {
	From     Identity `json:"from"`
	Target   string   `json:"target"`
	OK       bool     `json:"ok"`
	Status   int      `json:"status,omitempty"`
	Body     string   `json:"body,omitempty"`
	Addrs    []string `json:"addrs,omitempty"`
	Error    string   `json:"error,omitempty"`
	Attempts int      `json:"attempts"`
	Millis   int64    `json:"ms"`
}

func client(cmd string, args []string) int {
	fs := flag.NewFlagSet(cmd, flag.ExitOnError)
	timeout := fs.Duration("timeout", 3*time.Second, "per attempt")
	attempts := fs.Int("attempts", 1, "tries per target before it counts as failed")
	_ = fs.Parse(args)
	targets := fs.Args()
	if len(targets) == 0 {
		usage()
	}
	if cmd != "sweep" {
		if len(targets) != 1 {
			usage()
		}
		r := probe(cmd+":"+targets[0], *timeout, *attempts)
		if !r.OK {
			fmt.Fprintf(os.Stderr, "netcheck %s %s: %s\n", cmd, targets[0], r.Error)
			return 1
		}
		if cmd == "get" {
			fmt.Print(r.Body)
		} else {
			fmt.Println(strings.Join(r.Addrs, "\n"))
		}
		return 0
	}
	results := make([]Result, len(targets))
	var wg sync.WaitGroup
	for i, t := range targets {
		wg.Add(1)
		go func() {
			defer wg.Done()
			results[i] = probe(t, *timeout, *attempts)
		}()
	}
	wg.Wait()
	code := 0
	enc := json.NewEncoder(os.Stdout)
	for _, r := range results {
		if !r.OK {
			code = 1
		}
		_ = enc.Encode(r)
	}
	return code
}

// probe runs one target ("get:URL" or "resolve:NAME"), retrying failed attempts
// (a pause of a quarter of the timeout between them).
func probe(target string, timeout time.Duration, attempts int) Result {
	r := Result{From: identity(), Target: target}
	kind, arg, found := strings.Cut(target, ":")
	if !found || (kind != "get" && kind != "resolve") || arg == "" {
		r.Error = "target must be get:URL or resolve:NAME"
		return r
	}
	if attempts < 1 {
		attempts = 1
	}
	start := time.Now()
	for r.Attempts = 1; ; r.Attempts++ {
		var err error
		if kind == "get" {
			r.Status, r.Body, err = get(arg, timeout)
		} else {
			r.Addrs, err = resolve(arg, timeout)
		}
		r.OK = err == nil
		r.Error = ""
		if err != nil {
			r.Error = err.Error()
		}
		if r.OK || r.Attempts >= attempts {
			break
		}
		time.Sleep(timeout / 4)
	}
	r.Millis = time.Since(start).Milliseconds()
	return r
}

func get(url string, timeout time.Duration) (int, string, error) {
	c := &http.Client{
		Timeout: timeout,
		// Never a proxy, a fresh connection per request: every attempt crosses the network.
		Transport: &http.Transport{Proxy: nil, DisableKeepAlives: true,
			DialContext: (&net.Dialer{Timeout: timeout, Resolver: resolver()}).DialContext},
	}
	resp, err := c.Get(url)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	if err != nil {
		return resp.StatusCode, string(b), fmt.Errorf("reading the answer: %w", err)
	}
	if resp.StatusCode != http.StatusOK {
		return resp.StatusCode, string(b), fmt.Errorf("HTTP %s", resp.Status)
	}
	return resp.StatusCode, string(b), nil
}

// resolver is Go's own DNS client: it reads the pod's /etc/resolv.conf (cluster DNS,
// search domains, ndots) and /etc/hosts, the same way a pod's programs do.
func resolver() *net.Resolver { return &net.Resolver{PreferGo: true} }

func resolve(name string, timeout time.Duration) ([]string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	addrs, err := resolver().LookupHost(ctx, name)
	if err != nil {
		return nil, err
	}
	sort.Strings(addrs)
	return addrs, nil
}
