package servicetest

import (
	"bytes"
	"os"
	"os/exec"
	"testing"
)

// NginxModules is what a configuration with a stream block needs first
// for the nginx binary at path: Debian's builds the stream module apart
// (libnginx-mod-stream), and it is loaded; the official image's has it
// built in, and needs nothing.
func NginxModules(tb testing.TB, nginx string) []byte {
	tb.Helper()
	out, err := exec.Command(nginx, "-V").CombinedOutput()
	if err != nil {
		tb.Fatalf("nginx -V: %v\n%s", err, out)
	}
	if !bytes.Contains(out, []byte("--with-stream=dynamic")) {
		return nil
	}
	const module = "/usr/lib/nginx/modules/ngx_stream_module.so"
	if _, err := os.Stat(module); err != nil {
		tb.Fatalf("this nginx builds its stream module apart, and %s is missing: apt-get install libnginx-mod-stream", module)
	}
	return []byte("load_module " + module + ";\n")
}
