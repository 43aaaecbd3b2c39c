// goh2: a Go net/http HTTPS server and client speaking HTTP/2 (ALPN h2, the standard
// library's defaults; standard library only) for the l7probe HTTP/2 tests.
//
//	goh2 server -addr 127.0.0.1:8443 -cert cert.pem -key key.pem
//	goh2 grpcserver -addr 127.0.0.1:8443 -cert cert.pem -key key.pem
//	goh2 client -c 4 -delay 2s https://127.0.0.1:8443/a https://127.0.0.1:8443/status/404 ...
//
// Server routes: /status/<code> answers with that status code; anything else 200 "ok\n".
// grpcserver speaks gRPC's wire format on net/http's h2 (length-prefixed messages,
// grpc-status in trailers) for tests/support/grpcapp.py's service test.Svc: Unary answers
// the status its request names ("ok" or e.g. "NOT_FOUND"), ServerStream 4 messages,
// ClientStream one, Bidi echoes each until "ABORT" (UNAVAILABLE).
// It prints "listening <addr>" when ready. The client fetches every URL once, -c at a
// time, over one connection (HTTP/2 multiplexes the streams), the certificate not
// verified; it prints "proto=<proto> requests=N errors=E status=<code>:<count>,...".
package main

import (
	"crypto/tls"
	"flag"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"os"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"
)

func handler(w http.ResponseWriter, r *http.Request) {
	if strings.HasPrefix(r.URL.Path, "/status/") {
		code, err := strconv.Atoi(strings.TrimPrefix(r.URL.Path, "/status/"))
		if err != nil || code < 200 || code > 599 {
			code = 400
		}
		w.WriteHeader(code)
		fmt.Fprintf(w, "status %d\n", code)
		return
	}
	w.Write([]byte("ok\n"))
}

var grpcCodes = map[string]int{"ok": 0, "CANCELLED": 1, "UNKNOWN": 2, "INVALID_ARGUMENT": 3,
	"DEADLINE_EXCEEDED": 4, "NOT_FOUND": 5, "ALREADY_EXISTS": 6, "PERMISSION_DENIED": 7,
	"RESOURCE_EXHAUSTED": 8, "FAILED_PRECONDITION": 9, "ABORTED": 10, "OUT_OF_RANGE": 11,
	"UNIMPLEMENTED": 12, "INTERNAL": 13, "UNAVAILABLE": 14, "DATA_LOSS": 15,
	"UNAUTHENTICATED": 16}

func grpcMessages(body []byte) [][]byte {
	var out [][]byte
	for len(body) >= 5 {
		n := int(body[1])<<24 | int(body[2])<<16 | int(body[3])<<8 | int(body[4])
		if 5+n > len(body) {
			break
		}
		out = append(out, body[5:5+n])
		body = body[5+n:]
	}
	return out
}

func grpcHandler(w http.ResponseWriter, r *http.Request) {
	body, _ := io.ReadAll(r.Body)
	msgs := grpcMessages(body)
	w.Header().Set("Content-Type", "application/grpc")
	w.Header().Set("Trailer", "Grpc-Status")
	w.WriteHeader(200)
	send := func(m []byte) {
		w.Write([]byte{0, byte(len(m) >> 24), byte(len(m) >> 16), byte(len(m) >> 8), byte(len(m))})
		w.Write(m)
	}
	code := 0
	switch r.URL.Path {
	case "/test.Svc/Unary":
		if len(msgs) > 0 {
			code = grpcCodes[string(msgs[0])]
		}
		if code == 0 {
			send([]byte("fine"))
		}
	case "/test.Svc/ServerStream":
		for i := 0; i < 4; i++ {
			send([]byte(fmt.Sprintf("r%d", i)))
		}
	case "/test.Svc/ClientStream":
		send(body)
	case "/test.Svc/Bidi":
		for _, m := range msgs {
			if string(m) == "ABORT" {
				code = 14
				break
			}
			send(m)
		}
	default:
		code = 12
	}
	w.Header().Set("Grpc-Status", strconv.Itoa(code))
}

func server(args []string, grpc bool) {
	fs := flag.NewFlagSet("server", flag.ExitOnError)
	addr := fs.String("addr", "127.0.0.1:8443", "listen address")
	cert := fs.String("cert", "cert.pem", "certificate (PEM)")
	key := fs.String("key", "key.pem", "private key (PEM)")
	fs.Parse(args)
	ln, err := net.Listen("tcp", *addr)
	if err != nil {
		log.Fatalf("listen: %v", err)
	}
	fmt.Printf("listening %s\n", ln.Addr())
	os.Stdout.Sync()
	h := http.HandlerFunc(handler)
	if grpc {
		h = http.HandlerFunc(grpcHandler)
	}
	srv := &http.Server{Handler: h}
	log.Fatal(srv.ServeTLS(ln, *cert, *key))
}

func client(args []string) {
	fs := flag.NewFlagSet("client", flag.ExitOnError)
	conc := fs.Int("c", 4, "concurrent requests")
	delay := fs.Duration("delay", 0, "wait this long before the first request")
	fs.Parse(args)
	time.Sleep(*delay)
	tr := &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true},
		ForceAttemptHTTP2: true, MaxConnsPerHost: 1}
	cl := &http.Client{Transport: tr}
	var mu sync.Mutex
	codes := map[int]int{}
	errs := 0
	proto := ""
	work := make(chan string)
	var wg sync.WaitGroup
	for i := 0; i < *conc; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for u := range work {
				resp, err := cl.Get(u)
				mu.Lock()
				if err != nil {
					errs++
					fmt.Fprintln(os.Stderr, err)
					mu.Unlock()
					continue
				}
				proto = resp.Proto
				mu.Unlock()
				io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				mu.Lock()
				codes[resp.StatusCode]++
				mu.Unlock()
			}
		}()
	}
	for _, u := range fs.Args() {
		work <- u
	}
	close(work)
	wg.Wait()
	var keys []int
	for k := range codes {
		keys = append(keys, k)
	}
	sort.Ints(keys)
	var parts []string
	for _, k := range keys {
		parts = append(parts, fmt.Sprintf("%d:%d", k, codes[k]))
	}
	fmt.Printf("proto=%s requests=%d errors=%d status=%s\n", proto, len(fs.Args()), errs,
		strings.Join(parts, ","))
	if errs > 0 {
		os.Exit(1)
	}
}

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: goh2 server|client ...")
		os.Exit(2)
	}
	if os.Args[1] == "server" || os.Args[1] == "grpcserver" {
		server(os.Args[2:], os.Args[1] == "grpcserver")
	} else {
		client(os.Args[2:])
	}
}
