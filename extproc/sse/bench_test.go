package sse

import (
	"fmt"
	"math/rand/v2"
	"strings"
	"testing"
)

// corpus is a generated SSE stream, kept as one slice per event so that it
// can be fed one event per chunk.
type corpus struct {
	name   string
	events [][]byte
}

func (c corpus) bytes() []byte {
	var b []byte
	for _, e := range c.events {
		b = append(b, e...)
	}
	return b
}

// mcpCorpus is a Streamable HTTP MCP stream of about 2 MiB: progress and log
// notifications with ids like "3-17", small JSON-RPC results, keep-alive
// comments, and now and then a tool result of 4–16 KiB.
func mcpCorpus() corpus {
	r := rand.New(rand.NewPCG(7, 11))
	c := corpus{name: "mcp"}
	size := 0
	for n := 1; size < 2<<20; n++ {
		var e string
		switch x := r.IntN(100); {
		case x < 60:
			e = fmt.Sprintf("event: message\nid: 3-%d\ndata: {\"jsonrpc\":\"2.0\",\"method\":\"notifications/progress\",\"params\":{\"progressToken\":\"tok-%d\",\"progress\":%d,\"total\":1000,\"message\":\"indexing files\"}}\n\n", n, r.IntN(50), n%1000)
		case x < 80:
			e = fmt.Sprintf("event: message\nid: 3-%d\ndata: {\"jsonrpc\":\"2.0\",\"method\":\"notifications/message\",\"params\":{\"level\":\"info\",\"logger\":\"fs\",\"data\":\"read %d bytes from /srv/data/file-%d.json\"}}\n\n", n, r.IntN(1<<20), r.IntN(1000))
		case x < 90:
			e = ": ping\n\n"
		case x < 97:
			e = fmt.Sprintf("event: message\nid: 3-%d\ndata: {\"jsonrpc\":\"2.0\",\"id\":%d,\"result\":{\"content\":[{\"type\":\"text\",\"text\":\"ok\"}],\"isError\":false}}\n\n", n, n)
		default:
			text := strings.Repeat("lorem ipsum dolor sit amet, \\\"quoted\\\" \\n ", (4<<10+r.IntN(12<<10))/40)
			e = fmt.Sprintf("event: message\nid: 3-%d\ndata: {\"jsonrpc\":\"2.0\",\"id\":%d,\"result\":{\"content\":[{\"type\":\"text\",\"text\":\"%s\"}],\"isError\":false}}\n\n", n, n, text)
		}
		c.events = append(c.events, []byte(e))
		size += len(e)
	}
	return c
}

// llmCorpus is an OpenAI-style chat completion token stream of about 2 MiB:
// one small JSON chunk per token, ending in "data: [DONE]".
func llmCorpus() corpus {
	r := rand.New(rand.NewPCG(3, 5))
	words := []string{" the", " model", " streams", " tokens", ",", " and", " each", " one", " is", " an", " event", ".", "\\n", " Hello", " world"}
	c := corpus{name: "llm"}
	size := 0
	for size < 2<<20 {
		e := fmt.Sprintf("data: {\"id\":\"chatcmpl-AbC123xyz\",\"object\":\"chat.completion.chunk\",\"created\":1730000000,\"model\":\"gpt-4o-2024-08-06\",\"system_fingerprint\":\"fp_abc123\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"%s\"},\"logprobs\":null,\"finish_reason\":null}]}\n\n", words[r.IntN(len(words))])
		c.events = append(c.events, []byte(e))
		size += len(e)
	}
	c.events = append(c.events, []byte("data: [DONE]\n\n"))
	return c
}

// chunked cuts b into chunks of n bytes, as a proxy would deliver it.
func chunked(b []byte, n int) [][]byte {
	var out [][]byte
	for len(b) > 0 {
		k := min(n, len(b))
		out = append(out, b[:k])
		b = b[k:]
	}
	return out
}

// BenchmarkParse parses each corpus fed one event per chunk and in 16 KiB
// chunks. events/s counts blocks with data, the events a browser dispatches.
func BenchmarkParse(b *testing.B) {
	for _, c := range []corpus{mcpCorpus(), llmCorpus()} {
		all := c.bytes()
		for _, split := range []struct {
			name   string
			chunks [][]byte
		}{
			{"event", c.events},
			{"16KiB", chunked(all, 16<<10)},
		} {
			b.Run(c.name+"/"+split.name, func(b *testing.B) {
				p := &Parser{}
				events, sink := 0, 0
				parse := func() {
					for _, chunk := range split.chunks {
						p.Feed(chunk)
						for {
							s, ok := p.Next()
							if !ok {
								break
							}
							if s.HasData {
								events++
							}
							sink += len(s.ID) + len(s.Event)
						}
					}
					sink += len(p.Flush())
				}
				parse() // warm up: the carry grows to the largest block once
				events = 0
				b.SetBytes(int64(len(all)))
				b.ReportAllocs()
				for b.Loop() {
					parse()
				}
				b.ReportMetric(float64(events)/b.Elapsed().Seconds(), "events/s")
				b.ReportMetric(float64(events)/float64(b.N), "events/op")
				if sink < 0 {
					b.Fatal(sink)
				}
			})
		}
	}
}
