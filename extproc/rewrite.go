package extproc

// rewriter builds the answer to one body chunk from the keep, drop and
// insert decisions on its segments, in order. Until something is dropped or
// inserted, the answer is a prefix of the chunk and is not copied: most
// chunks are answered with the bytes Envoy sent. Its buffer is reused from
// chunk to chunk.
type rewriter struct {
	body  []byte // the chunk
	kept  int    // while clean: the answer is body[:kept]
	dirty bool   // the answer is assembled in out
	out   []byte
}

// reset starts the answer to body. carried reports that the parser holds
// bytes from earlier chunks not yet forwarded, which come ahead of body's:
// the answer is then not a prefix of body.
func (w *rewriter) reset(body []byte, carried bool) {
	w.body, w.kept, w.dirty = body, 0, carried
	w.out = w.out[:0]
}

// keep forwards raw, the next segment: a run of body, or of the parser's
// carry buffer ending in body.
func (w *rewriter) keep(raw []byte) {
	if w.dirty {
		w.out = append(w.out, raw...)
	} else {
		w.kept += len(raw)
	}
}

// drop leaves out the next segment.
func (w *rewriter) drop() { w.assemble() }

// insert adds bytes that are not the chunk's (a replay) at this point.
func (w *rewriter) insert(b []byte) {
	w.assemble()
	w.out = append(w.out, b...)
}

// assemble switches to assembling the answer in out, with what was kept so far.
func (w *rewriter) assemble() {
	if !w.dirty {
		w.dirty = true
		w.out = append(w.out[:0], w.body[:w.kept]...)
	}
}

// answer returns the chunk's replacement and whether it differs from body.
// The bytes are valid until the next reset. The answer is sent before that:
// grpc-go's SendMsg encodes the message before it returns, which is what
// the reuse rests on. Its doc still forbids changing a sent message, for
// stats handlers that may read one later (payload logging): the server
// installs none, and one that did would need the answer copied.
func (w *rewriter) answer() (out []byte, changed bool) {
	if w.dirty {
		return w.out, true
	}
	return w.body[:w.kept], w.kept != len(w.body)
}
