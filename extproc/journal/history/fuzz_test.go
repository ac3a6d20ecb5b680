package history

import (
	"bytes"
	"crypto/sha256"
	"encoding/base64"
	"strings"
	"testing"
)

// FuzzSubjectToken checks SubjectToken on any two session ids:
//   - every token is non-empty, at most maxTokenLen bytes, and made only of
//     [A-Za-z0-9_=-], so it is one subject token: never the wildcards '*' or
//     '>', never the separator '.', never whitespace, never empty;
//   - Subject adds exactly one token to the prefix;
//   - an id of 1 to 150 bytes is encoded, not hashed, and the token decodes
//     back to the id (the round trip; SubjectToken has no inverse in the
//     package, so base64url decodes it here);
//   - an empty or longer id is hashed: "=" and the SHA-256 of the id, which
//     is one way, so only its shape and the hash are checked;
//   - two different ids never share a token.
func FuzzSubjectToken(f *testing.F) {
	// Ids that would change routing if used raw; more seeds are in
	// testdata/fuzz/FuzzSubjectToken.
	for _, p := range [][2]string{{"a.b.c", "*"}, {">", "x y"}, {"sess.>", ""}, {"\r\n", "\x00"}, {"=", "."}} {
		f.Add(p[0], p[1])
	}
	f.Add(strings.Repeat("\xff", 150), strings.Repeat("\xff", 151))
	f.Add("a.b", "a>b")
	f.Fuzz(func(t *testing.T, a, b string) {
		ta := checkToken(t, a)
		if tb := checkToken(t, b); a != b && ta == tb {
			t.Fatalf("ids %q and %q share token %q", a, b, ta)
		}
	})
}

// checkToken checks the token of one id and returns it.
func checkToken(t *testing.T, id string) string {
	t.Helper()
	tok := SubjectToken(id)
	if tok == "" || len(tok) > maxTokenLen {
		t.Fatalf("SubjectToken(%q) = %q: %d bytes", id, tok, len(tok))
	}
	for i := 0; i < len(tok); i++ {
		c := tok[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_' || c == '=') {
			t.Fatalf("SubjectToken(%q) = %q: byte %q is not allowed in a token", id, tok, c)
		}
	}
	if got := SubjectToken(id); got != tok {
		t.Fatalf("SubjectToken(%q) gave %q, then %q", id, tok, got)
	}
	subj := Subject("", id)
	if subj != DefaultSubjectPrefix+"."+tok || strings.Count(subj, ".") != strings.Count(DefaultSubjectPrefix, ".")+1 {
		t.Fatalf("Subject(%q) = %q: want %q and one token more than the prefix", id, subj, DefaultSubjectPrefix+"."+tok)
	}
	if rest, hashed := strings.CutPrefix(tok, hashedPrefix); hashed {
		sum := sha256.Sum256([]byte(id))
		if len(id) != 0 && len(id) <= 150 {
			t.Fatalf("SubjectToken of %d bytes %q was hashed", len(id), id)
		}
		if rest != base64.RawURLEncoding.EncodeToString(sum[:]) {
			t.Fatalf("SubjectToken(%q) = %q: not %q and the id's SHA-256", id, tok, hashedPrefix)
		}
		return tok
	}
	dec, err := base64.RawURLEncoding.DecodeString(tok)
	if err != nil || !bytes.Equal(dec, []byte(id)) {
		t.Fatalf("SubjectToken(%q) = %q: decodes to %q, %v", id, tok, dec, err)
	}
	return tok
}
