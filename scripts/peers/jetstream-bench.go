// jetstream-bench: the NATS JetStream side of scripts/bench-peers.sh. Publishes or reads
// fixed-size messages on one file-backed stream, the way runnel-bench and iggy-bench load
// their brokers, and prints one JSON object: messages, seconds, messages_per_sec.
//
//	jetstream-bench -mode produce -producers 4 -messages 2000000 -size 1000 -window 1000
//	jetstream-bench -mode consume -consumers 4 -messages 2000000 -batch 1000
//	jetstream-bench -mode delete
//
// Each producer (or consumer) has its own connection and subject bench.<i>; producers keep
// up to -window asynchronous publishes unacknowledged (a batch in flight), consumers pull
// -batch messages at a time from an ephemeral consumer without acks. Built with Debian's
// golang-go and golang-github-nats-io-go-nats-dev (GOPATH mode, no module download).
package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
)

func main() {
	url := flag.String("url", nats.DefaultURL, "server URL")
	mode := flag.String("mode", "produce", "produce, consume, or delete (the stream)")
	stream := flag.String("stream", "bench", "stream name (subjects <stream>.*)")
	producers := flag.Int("producers", 1, "producers, each on its own connection and subject")
	consumers := flag.Int("consumers", 1, "consumers, each on its own connection and subject")
	messages := flag.Int("messages", 1000000, "messages in all")
	size := flag.Int("size", 1000, "message size in bytes")
	window := flag.Int("window", 1000, "asynchronous publishes in flight per producer")
	batch := flag.Int("batch", 1000, "messages per pull")
	fresh := flag.Bool("fresh", true, "produce: delete and recreate the stream first")
	flag.Parse()

	var start time.Time
	var err error
	switch *mode {
	case "produce":
		start, err = produce(*url, *stream, *producers, *messages, *size, *window, *fresh)
	case "consume":
		start, err = consume(*url, *stream, *consumers, *messages, *batch)
	case "delete":
		err = deleteStream(*url, *stream)
		if err == nil {
			return
		}
	default:
		err = fmt.Errorf("unknown mode %q", *mode)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "jetstream-bench:", err)
		os.Exit(1)
	}
	secs := time.Since(start).Seconds()
	out, _ := json.Marshal(map[string]any{
		"mode": *mode, "messages": *messages, "seconds": secs,
		"messages_per_sec": float64(*messages) / secs,
	})
	fmt.Println(string(out))
}

func connect(url string) (*nats.Conn, nats.JetStreamContext, error) {
	nc, err := nats.Connect(url)
	if err != nil {
		return nil, nil, err
	}
	js, err := nc.JetStream(nats.PublishAsyncMaxPending(1 << 20))
	return nc, js, err
}

func produce(url, stream string, producers, messages, size, window int, fresh bool) (time.Time, error) {
	nc, js, err := connect(url)
	if err != nil {
		return time.Time{}, err
	}
	defer nc.Close()
	if fresh {
		_ = js.DeleteStream(stream)
	}
	if _, err := js.StreamInfo(stream); err != nil {
		if _, err := js.AddStream(&nats.StreamConfig{
			Name: stream, Subjects: []string{stream + ".*"}, Storage: nats.FileStorage,
		}); err != nil {
			return time.Time{}, err
		}
	}
	payload := make([]byte, size)
	start := time.Now()
	return start, inParallel(producers, messages, func(p, n int) error {
		nc, _, err := connect(url)
		if err != nil {
			return err
		}
		defer nc.Close()
		js, err := nc.JetStream(nats.PublishAsyncMaxPending(window))
		if err != nil {
			return err
		}
		subject := fmt.Sprintf("%s.%d", stream, p)
		for i := 0; i < n; i++ {
			if _, err := js.PublishAsync(subject, payload); err != nil {
				return err
			}
		}
		select {
		case <-js.PublishAsyncComplete():
			return nil
		case <-time.After(5 * time.Minute):
			return fmt.Errorf("producer %d: acknowledgements did not arrive", p)
		}
	})
}

func consume(url, stream string, consumers, messages, batch int) (time.Time, error) {
	start := time.Now()
	return start, inParallel(consumers, messages, func(c, n int) error {
		subject := fmt.Sprintf("%s.*", stream)
		if consumers > 1 {
			subject = fmt.Sprintf("%s.%d", stream, c)
		}
		nc, js, err := connect(url)
		if err != nil {
			return err
		}
		defer nc.Close()
		sub, err := js.PullSubscribe(subject, "", nats.DeliverAll(), nats.AckNone(), nats.BindStream(stream))
		if err != nil {
			return err
		}
		for got := 0; got < n; {
			msgs, err := sub.Fetch(min(batch, n-got), nats.MaxWait(10*time.Second))
			if err != nil {
				return fmt.Errorf("%s after %d messages: %w", subject, got, err)
			}
			got += len(msgs)
		}
		return nil
	})
}

// inParallel runs work(i, share) for i in 0..workers at once, the shares of messages
// differing by at most one, and returns the first error.
func inParallel(workers, messages int, work func(i, n int) error) error {
	var wg sync.WaitGroup
	errs := make(chan error, workers)
	for i := 0; i < workers; i++ {
		n := messages / workers
		if i < messages%workers {
			n++
		}
		wg.Add(1)
		go func(i, n int) {
			defer wg.Done()
			if err := work(i, n); err != nil {
				errs <- err
			}
		}(i, n)
	}
	wg.Wait()
	close(errs)
	return <-errs
}

func deleteStream(url, stream string) error {
	nc, js, err := connect(url)
	if err != nil {
		return err
	}
	defer nc.Close()
	if err := js.DeleteStream(stream); err != nil && err != nats.ErrStreamNotFound {
		return err
	}
	return nil
}

func min(a, b int) int {
	if a < b {
		return a
	}
	return b
}
