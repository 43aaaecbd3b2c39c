// goclient: a minimal HTTPS/1.1 client (standard library only) used as a Go
// crypto/tls target by the l7probe tests.
//
//	goclient -n 10 -url https://127.0.0.1:8443/status/200
//	goclient -urls urls.txt            (one URL per line, each fetched once, in order)
//	goclient -delay 2s -urls urls.txt  (a client that starts working a while after exec)
//	goclient -wait -urls urls.txt      (... once a line arrives on stdin)
//
// All requests go over one keep-alive connection (MaxConnsPerHost 1), HTTP/2 is
// disabled, and the server certificate is not verified. Prints one summary line:
// "requests=N errors=E bytes=B status=<code>:<count>,...".
package main

import (
	"bufio"
	"crypto/tls"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"sort"
	"strings"
	"time"
)

func main() {
	n := flag.Int("n", 1, "number of requests to -url")
	url := flag.String("url", "", "URL to fetch -n times")
	urls := flag.String("urls", "", "file with one URL per line")
	delay := flag.Duration("delay", 0, "wait this long before the first request")
	wait := flag.Bool("wait", false, "then wait for a line on stdin (a test lets it go once the probe has attached)")
	flag.Parse()
	time.Sleep(*delay)
	if *wait {
		bufio.NewReader(os.Stdin).ReadString('\n')
	}

	var list []string
	if *urls != "" {
		f, err := os.Open(*urls)
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(2)
		}
		sc := bufio.NewScanner(f)
		for sc.Scan() {
			if line := strings.TrimSpace(sc.Text()); line != "" && !strings.HasPrefix(line, "#") {
				list = append(list, line)
			}
		}
		f.Close()
	}
	if *url != "" {
		for i := 0; i < *n; i++ {
			list = append(list, *url)
		}
	}
	if len(list) == 0 {
		fmt.Fprintln(os.Stderr, "usage: goclient (-n N -url URL | -urls FILE)")
		os.Exit(2)
	}

	tr := &http.Transport{
		TLSClientConfig:     &tls.Config{InsecureSkipVerify: true, NextProtos: []string{"http/1.1"}},
		TLSNextProto:        map[string]func(string, *tls.Conn) http.RoundTripper{},
		ForceAttemptHTTP2:   false,
		MaxConnsPerHost:     1,
		MaxIdleConnsPerHost: 1,
	}
	client := &http.Client{Transport: tr}
	codes := map[int]int{}
	errs, total := 0, int64(0)
	for _, u := range list {
		resp, err := client.Get(u)
		if err != nil {
			errs++
			fmt.Fprintln(os.Stderr, err)
			continue
		}
		nb, _ := io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		total += nb
		codes[resp.StatusCode]++
	}
	var keys []int
	for k := range codes {
		keys = append(keys, k)
	}
	sort.Ints(keys)
	var parts []string
	for _, k := range keys {
		parts = append(parts, fmt.Sprintf("%d:%d", k, codes[k]))
	}
	fmt.Printf("requests=%d errors=%d bytes=%d status=%s\n", len(list), errs, total, strings.Join(parts, ","))
	if errs > 0 {
		os.Exit(1)
	}
}
