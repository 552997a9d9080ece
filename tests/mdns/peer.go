// A go-micro style mDNS peer built on a real Go mDNS stack: HashiCorp's
// github.com/hashicorp/mdns (Debian's golang-github-hashicorp-mdns-dev),
// the library go-micro's util/mdns was forked from. tests/mdns.rs builds
// it with `go build` in GOPATH mode and runs it inside the test's network
// namespace. The TXT record is go-micro's: the hex of zlib(JSON of the
// service description), in strings of 255 characters.
//
//	peer serve SERVICE ID PORT VERSION   announce ID until stdin closes
//	peer browse SERVICE SECONDS          print each node found, one JSON line
package main

import (
	"bufio"
	"bytes"
	"compress/zlib"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/hashicorp/mdns"
)

// mdnsTxt is go-micro's registry/mdns description, fields in its order.
type mdnsTxt struct {
	Metadata  map[string]string
	Service   string
	Version   string
	Endpoints []interface{}
}

func encode(txt *mdnsTxt) ([]string, error) {
	b, err := json.Marshal(txt)
	if err != nil {
		return nil, err
	}
	var buf bytes.Buffer
	w := zlib.NewWriter(&buf)
	if _, err := w.Write(b); err != nil {
		return nil, err
	}
	if err := w.Close(); err != nil {
		return nil, err
	}
	s := hex.EncodeToString(buf.Bytes())
	var out []string
	for len(s) > 255 {
		out = append(out, s[:255])
		s = s[255:]
	}
	return append(out, s), nil
}

func decode(fields []string) (*mdnsTxt, error) {
	raw, err := hex.DecodeString(strings.Join(fields, ""))
	if err != nil {
		return nil, err
	}
	r, err := zlib.NewReader(bytes.NewReader(raw))
	if err != nil {
		return nil, err
	}
	b, err := io.ReadAll(r)
	if err != nil {
		return nil, err
	}
	var txt mdnsTxt
	if err := json.Unmarshal(b, &txt); err != nil {
		return nil, err
	}
	return &txt, nil
}

func serve(service, id string, port int, version string) error {
	txt, err := encode(&mdnsTxt{
		Metadata: map[string]string{"registry": "mdns", "server": "go"},
		Service:  service,
		Version:  version,
	})
	if err != nil {
		return err
	}
	zone, err := mdns.NewMDNSService(id, service, "micro.", "", port,
		[]net.IP{net.IPv4(127, 0, 0, 1)}, txt)
	if err != nil {
		return err
	}
	server, err := mdns.NewServer(&mdns.Config{Zone: zone})
	if err != nil {
		return err
	}
	fmt.Println("ready")
	// Until the test closes stdin (or the process is killed).
	_, _ = io.Copy(io.Discard, bufio.NewReader(os.Stdin))
	return server.Shutdown()
}

func browse(service string, seconds int) error {
	entries := make(chan *mdns.ServiceEntry, 16)
	done := make(chan error, 1)
	go func() {
		done <- mdns.Query(&mdns.QueryParam{
			Service: service,
			Domain:  "micro",
			Timeout: time.Duration(seconds) * time.Second,
			Entries: entries,
		})
		close(entries)
	}()
	for e := range entries {
		txt, err := decode(e.InfoFields)
		line := map[string]interface{}{
			"name": e.Name,
			"host": e.Host,
			"addr": e.AddrV4.String(),
			"port": e.Port,
		}
		if err != nil {
			line["txt_error"] = err.Error()
		} else {
			line["txt"] = txt
		}
		b, _ := json.Marshal(line)
		fmt.Println(string(b))
	}
	return <-done
}

func main() {
	var err error
	switch {
	case len(os.Args) == 6 && os.Args[1] == "serve":
		var port int
		if port, err = strconv.Atoi(os.Args[4]); err == nil {
			err = serve(os.Args[2], os.Args[3], port, os.Args[5])
		}
	case len(os.Args) == 4 && os.Args[1] == "browse":
		var seconds int
		if seconds, err = strconv.Atoi(os.Args[3]); err == nil {
			err = browse(os.Args[2], seconds)
		}
	default:
		err = fmt.Errorf("usage: peer serve SERVICE ID PORT VERSION | peer browse SERVICE SECONDS")
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "peer:", err)
		os.Exit(1)
	}
}
