package mcpe2e

import (
	"os"
	"testing"

	"github.com/ssetrack/ssetrack/test/harness"
)

func TestMain(m *testing.M) { os.Exit(harness.Main(m)) }
