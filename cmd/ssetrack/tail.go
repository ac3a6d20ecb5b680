package main

import (
	"context"
	"errors"
	"io"
)

func tail(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	return errors.New("tail: not wired yet")
}
