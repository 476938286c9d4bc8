package replay

import (
	"bytes"
	"context"
	"io/fs"
	"path/filepath"
	"strings"
	"testing"

	"github.com/santhosh-tekuri/jsonschema/v6"
)

// Every alert every fixture under rules/tests raises is valid against
// schemas/alert.schema.json.
func TestFixtureAlertsMatchTheAlertSchema(t *testing.T) {
	t.Parallel()
	c := jsonschema.NewCompiler()
	c.AssertFormat()
	schema, err := c.Compile("../../schemas/alert.schema.json")
	if err != nil {
		t.Fatal(err)
	}
	alerts := 0
	err = filepath.WalkDir("../../rules/tests", func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() || !strings.HasSuffix(p, ".yaml") {
			return err
		}
		_, out, err := replayFixture(context.Background(), p)
		if err != nil {
			t.Errorf("%s: %v", p, err)
			return nil
		}
		for _, line := range bytes.Split(bytes.TrimSpace(out), []byte("\n")) {
			if len(line) == 0 {
				continue
			}
			alerts++
			v, err := jsonschema.UnmarshalJSON(bytes.NewReader(line))
			if err == nil {
				err = schema.Validate(v)
			}
			if err != nil {
				t.Errorf("%s: alert does not match the schema: %v\n%s", p, err, line)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if alerts < 50 {
		t.Errorf("only %d alerts validated: are the fixtures there?", alerts)
	}
	t.Logf("%d alerts validated", alerts)
}
