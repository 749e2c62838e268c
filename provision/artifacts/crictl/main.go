// crictl (provision's minimal build): the subset of cri-tools' crictl that node
// checks and operators use, on the same CRI client library the kubelet uses.
// cri-tools itself is not published on the module proxy this project can reach;
// see docs/artifacts.md. Commands: version, info, pull, images, inspecti, rmi,
// ps, pods. Endpoint: --runtime-endpoint, $CONTAINER_RUNTIME_ENDPOINT, or
// /etc/crictl.yaml's runtime-endpoint, default unix:///run/containerd/containerd.sock.
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"strings"
	"text/tabwriter"
	"time"

	noop "go.opentelemetry.io/otel/trace/noop"
	remote "k8s.io/cri-client/pkg"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

var version = "dev"

func endpoint(flagValue string) string {
	if flagValue != "" {
		return flagValue
	}
	if e := os.Getenv("CONTAINER_RUNTIME_ENDPOINT"); e != "" {
		return e
	}
	if data, err := os.ReadFile("/etc/crictl.yaml"); err == nil {
		for _, line := range strings.Split(string(data), "\n") {
			k, v, ok := strings.Cut(line, ":")
			if ok && strings.TrimSpace(k) == "runtime-endpoint" {
				return strings.Trim(strings.TrimSpace(v), `"'`)
			}
		}
	}
	return "unix:///run/containerd/containerd.sock"
}

func die(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "crictl: "+format+"\n", args...)
	os.Exit(1)
}

func printJSON(v any) {
	out, _ := json.MarshalIndent(v, "", "  ")
	fmt.Println(string(out))
}

func main() {
	fs := flag.NewFlagSet("crictl", flag.ExitOnError)
	ep := fs.String("runtime-endpoint", "", "CRI endpoint")
	fs.StringVar(ep, "r", "", "CRI endpoint (short)")
	_ = fs.String("image-endpoint", "", "ignored: images use the runtime endpoint")
	timeout := fs.Duration("timeout", 2*time.Minute, "timeout of one call")
	fs.Usage = func() {
		fmt.Fprintln(os.Stderr, "usage: crictl [--runtime-endpoint EP] version|info|pull IMAGE|images|inspecti IMAGE|rmi IMAGE|ps [-a]|pods")
	}
	_ = fs.Parse(os.Args[1:])
	args := fs.Args()
	if len(args) == 0 {
		fs.Usage()
		os.Exit(2)
	}
	ctx, cancel := context.WithTimeout(context.Background(), *timeout)
	defer cancel()
	tp := noop.NewTracerProvider()
	e := endpoint(*ep)
	cmd, rest := args[0], args[1:]
	switch cmd {
	case "version", "info", "ps", "pods":
		rs, err := remote.NewRemoteRuntimeService(ctx, e, *timeout, tp, false)
		if err != nil {
			die("connect %s: %v", e, err)
		}
		switch cmd {
		case "version":
			v, err := rs.Version(ctx, "v1")
			if err != nil {
				die("version: %v", err)
			}
			fmt.Printf("Version:  %s\nRuntimeName:  %s\nRuntimeVersion:  %s\nRuntimeApiVersion:  %s\n",
				v.Version, v.RuntimeName, v.RuntimeVersion, v.RuntimeApiVersion)
			fmt.Printf("crictl (provision) %s\n", version)
		case "info":
			st, err := rs.Status(ctx, true)
			if err != nil {
				die("info: %v", err)
			}
			printJSON(st)
		case "ps":
			all := len(rest) > 0 && (rest[0] == "-a" || rest[0] == "--all")
			var filter *runtimeapi.ContainerFilter
			if !all {
				filter = &runtimeapi.ContainerFilter{State: &runtimeapi.ContainerStateValue{State: runtimeapi.ContainerState_CONTAINER_RUNNING}}
			}
			cs, err := rs.ListContainers(ctx, filter)
			if err != nil {
				die("ps: %v", err)
			}
			w := tabwriter.NewWriter(os.Stdout, 0, 8, 2, ' ', 0)
			fmt.Fprintln(w, "CONTAINER\tIMAGE\tSTATE\tNAME\tPOD ID")
			for _, c := range cs {
				fmt.Fprintf(w, "%.13s\t%s\t%s\t%s\t%.13s\n", c.Id, c.Image.GetImage(), c.State, c.Metadata.GetName(), c.PodSandboxId)
			}
			w.Flush()
		case "pods":
			ps, err := rs.ListPodSandbox(ctx, nil)
			if err != nil {
				die("pods: %v", err)
			}
			w := tabwriter.NewWriter(os.Stdout, 0, 8, 2, ' ', 0)
			fmt.Fprintln(w, "POD ID\tSTATE\tNAME\tNAMESPACE")
			for _, p := range ps {
				fmt.Fprintf(w, "%.13s\t%s\t%s\t%s\n", p.Id, p.State, p.Metadata.GetName(), p.Metadata.GetNamespace())
			}
			w.Flush()
		}
	case "pull", "images", "inspecti", "rmi":
		is, err := remote.NewRemoteImageService(ctx, e, *timeout, tp, false)
		if err != nil {
			die("connect %s: %v", e, err)
		}
		need := func() string {
			if len(rest) != 1 {
				die("%s needs one IMAGE argument", cmd)
			}
			return rest[0]
		}
		switch cmd {
		case "pull":
			ref, err := is.PullImage(ctx, &runtimeapi.ImageSpec{Image: need()}, nil, nil)
			if err != nil {
				die("pull: %v", err)
			}
			fmt.Printf("Image is up to date for %s\n", ref)
		case "images":
			imgs, err := is.ListImages(ctx, nil)
			if err != nil {
				die("images: %v", err)
			}
			w := tabwriter.NewWriter(os.Stdout, 0, 8, 2, ' ', 0)
			fmt.Fprintln(w, "IMAGE\tTAG\tIMAGE ID\tSIZE")
			for _, im := range imgs {
				for _, t := range im.RepoTags {
					i := strings.LastIndex(t, ":")
					fmt.Fprintf(w, "%s\t%s\t%.13s\t%d\n", t[:i], t[i+1:], strings.TrimPrefix(im.Id, "sha256:"), im.Size)
				}
			}
			w.Flush()
		case "inspecti":
			st, err := is.ImageStatus(ctx, &runtimeapi.ImageSpec{Image: need()}, true)
			if err != nil {
				die("inspecti: %v", err)
			}
			if st.Image == nil {
				die("no such image %s", rest[0])
			}
			printJSON(st)
		case "rmi":
			if err := is.RemoveImage(ctx, &runtimeapi.ImageSpec{Image: need()}); err != nil {
				die("rmi: %v", err)
			}
			fmt.Printf("Deleted: %s\n", rest[0])
		}
	default:
		fs.Usage()
		os.Exit(2)
	}
}
