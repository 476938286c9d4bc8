package config

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"strconv"
	"strings"

	"github.com/joho/godotenv"
)

// WithDotEnv returns a getenv for Load that falls back to the variables of
// the .env file at path: a variable set (non-empty) in the real environment
// wins, and the file fills the gaps. A missing file is not an error, and then
// getenv is returned as it is; a file that cannot be read or parsed is.
//
// The file uses godotenv's syntax: KEY=value lines, '#' comments, and
// $VAR expansion in unquoted and double-quoted values, so a value that
// contains '$' belongs in single quotes.
func WithDotEnv(path string, getenv func(string) string) (func(string) string, error) {
	getenv, _, err := LoadDotEnv(path, getenv)
	return getenv, err
}

// LoadDotEnv is WithDotEnv that also says whether the file was there, so
// that the start-up log can name it.
func LoadDotEnv(path string, getenv func(string) string) (_ func(string) string, loaded bool, _ error) {
	src, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return getenv, false, nil
	}
	if err != nil {
		return nil, false, fmt.Errorf("read %s: %w", path, err)
	}
	vars, err := godotenv.UnmarshalBytes(src)
	if err != nil {
		return nil, false, fmt.Errorf("parse %s: %s", path, describeParseError(src, err))
	}
	return func(key string) string {
		if v := getenv(key); v != "" {
			return v
		}
		return vars[key]
	}, true, nil
}

// describeParseError turns a godotenv error into a message without the
// file's text: godotenv quotes the rest of the file or the unterminated
// value, either of which can hold a password.
func describeParseError(src []byte, err error) string {
	msg := err.Error()
	switch {
	case strings.HasPrefix(msg, "unterminated quoted value"):
		return "a quoted value is not terminated"
	case strings.HasPrefix(msg, "unexpected character"):
		head, near, _ := strings.Cut(msg, " near ")
		rest, uerr := strconv.Unquote(near)
		src = bytes.ReplaceAll(src, []byte("\r\n"), []byte("\n"))
		if uerr == nil && len(rest) <= len(src) && bytes.HasSuffix(src, []byte(rest)) {
			line := 1 + bytes.Count(src[:len(src)-len(rest)], []byte("\n"))
			return fmt.Sprintf("line %d: %s", line, head)
		}
		return head
	default:
		return "malformed file"
	}
}
