package deploy_test

import (
	"bytes"
	"encoding/json"
	"net"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/compose-spec/compose-go/v2/cli"
	appsv1 "k8s.io/api/apps/v1"
	autoscalingv2 "k8s.io/api/autoscaling/v2"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	policyv1 "k8s.io/api/policy/v1"
	"sigs.k8s.io/yaml"

	"github.com/eventbus-suite/eventbus/pkg/servicetest"
)

// root is the repository root, seen from this package.
const root = ".."

// required are the variables each service cannot do without in compose.
var required = map[string][]string{
	"api":          {"REDIS_URL", "API_HTTP_ADDR", "API_GRPC_ADDR"},
	"logger":       {"REDIS_URL", "LOGGER_HTTP_ADDR", "LOGGER_DIR"},
	"notification": {"REDIS_URL", "NOTIFICATION_HTTP_ADDR"},
	"edge":         {"REDIS_URL", "EDGE_HTTP_ADDR", "EDGE_JWT_SECRET", "EDGE_DEMO"},
}

func TestComposeFile(t *testing.T) {
	t.Parallel()
	opts, err := cli.NewProjectOptions([]string{filepath.Join(root, "docker-compose.yml")},
		cli.WithWorkingDirectory(root), cli.WithName("eventbus"), cli.WithEnv(nil))
	if err != nil {
		t.Fatal(err)
	}
	project, err := opts.LoadProject(t.Context())
	if err != nil {
		t.Fatalf("load docker-compose.yml: %v", err)
	}
	var names []string
	for name := range project.Services {
		names = append(names, name)
	}
	slices.Sort(names)
	want := []string{"api", "edge", "grafana", "logger", "nginx", "notification", "prometheus", "redis"}
	if !slices.Equal(names, want) {
		t.Fatalf("services = %v, want %v", names, want)
	}

	for name, svc := range project.Services {
		if svc.Build != nil {
			if st, err := os.Stat(svc.Build.Context); err != nil || !st.IsDir() {
				t.Errorf("%s: build context %s does not exist", name, svc.Build.Context)
			}
			dockerfile := svc.Build.Dockerfile
			if !filepath.IsAbs(dockerfile) {
				dockerfile = filepath.Join(svc.Build.Context, dockerfile)
			}
			if _, err := os.Stat(dockerfile); err != nil {
				t.Errorf("%s: dockerfile %s does not exist", name, dockerfile)
			}
			arg := svc.Build.Args["SERVICE"]
			if arg == nil || *arg != name {
				t.Errorf("%s: build arg SERVICE = %v, want %s", name, arg, name)
			} else if _, err := os.Stat(filepath.Join(root, "services", name, "main.go")); err != nil {
				t.Errorf("%s: SERVICE=%s names no service folder", name, *arg)
			}
			if dep, ok := svc.DependsOn["redis"]; !ok || dep.Condition != "service_healthy" {
				t.Errorf("%s: does not wait for redis to be healthy", name)
			}
		}
		for _, v := range required[name] {
			if val, ok := svc.Environment[v]; !ok || val == nil || *val == "" {
				t.Errorf("%s: required variable %s is not set", name, v)
			}
		}
		for _, vol := range svc.Volumes {
			if vol.Type == "bind" {
				if _, err := os.Stat(vol.Source); err != nil {
					t.Errorf("%s: mounts %s, which does not exist", name, vol.Source)
				}
			}
		}
	}
	if project.Services["redis"].HealthCheck == nil {
		t.Error("redis has no healthcheck")
	}
	for name, n := range map[string]int{"notification": 2, "edge": 2} {
		if d := project.Services[name].Deploy; d == nil || d.Replicas == nil || *d.Replicas != n {
			t.Errorf("%s: replicas = %v, want %d", name, d, n)
		}
	}
	ports := map[string][]string{
		"api": {"8080:8080", "9090:9090"}, "logger": {"8082:8082"}, "nginx": {"8081:80", "11883:1883"},
		"prometheus": {"9091:9090"}, "grafana": {"3000:3000"},
	}
	for name, svc := range project.Services {
		var got []string
		for _, p := range svc.Ports {
			got = append(got, p.Published+":"+strconv.Itoa(int(p.Target)))
		}
		if !slices.Equal(got, ports[name]) {
			t.Errorf("%s: ports %v, want %v", name, got, ports[name])
		}
	}

	// The demo page reaches the api and the notification service through
	// the edge: each URL names the service and the port it listens on.
	edge := project.Services["edge"].Environment
	for v, target := range map[string]struct{ service, addr string }{
		"EDGE_DEMO_API_URL":    {"api", "API_HTTP_ADDR"},
		"EDGE_DEMO_NOTIFY_URL": {"notification", "NOTIFICATION_HTTP_ADDR"},
	} {
		var got, listen string
		if p := edge[v]; p != nil {
			got = *p
		}
		if p := project.Services[target.service].Environment[target.addr]; p != nil {
			listen = *p
		}
		u, err := url.Parse(got)
		if err != nil || u.Scheme != "http" || u.Hostname() != target.service || listen == "" || ":"+u.Port() != listen[strings.LastIndex(listen, ":"):] {
			t.Errorf("edge: %s = %q, want http://%s on the port of its %s (%q)", v, got, target.service, target.addr, listen)
		}
	}
	// Presence for notify (the notification service routes by it) and
	// lobby (the demo page's "who is online").
	if p := edge["EDGE_PRESENCE_NAMESPACES"]; p == nil || !slices.Contains(strings.Split(*p, ","), "notify") || !slices.Contains(strings.Split(*p, ","), "lobby") {
		t.Errorf("edge: EDGE_PRESENCE_NAMESPACES = %v, want notify and lobby among them", p)
	}
}

// docker compose --profile cluster up, with REDIS_URL naming the cluster
// (README): six cluster nodes, a one-off job joining them, and every
// service on the cluster.
func TestComposeClusterProfile(t *testing.T) {
	t.Parallel()
	const url = "redis+cluster://redis-1:6379,redis-2:6379,redis-3:6379"
	opts, err := cli.NewProjectOptions([]string{filepath.Join(root, "docker-compose.yml")},
		cli.WithWorkingDirectory(root), cli.WithName("eventbus"), cli.WithEnv([]string{"REDIS_URL=" + url}), cli.WithProfiles([]string{"cluster"}))
	if err != nil {
		t.Fatal(err)
	}
	project, err := opts.LoadProject(t.Context())
	if err != nil {
		t.Fatalf("load docker-compose.yml with the cluster profile: %v", err)
	}
	var nodes []string
	for i := 1; i <= 6; i++ {
		name := "redis-" + strconv.Itoa(i)
		nodes = append(nodes, name)
		svc, ok := project.Services[name]
		if !ok {
			t.Fatalf("no service %s in the cluster profile", name)
		}
		if cmd := strings.Join(svc.Command, " "); !strings.Contains(cmd, "--cluster-enabled yes") || !strings.Contains(cmd, "--appendonly yes") {
			t.Errorf("%s runs %q, want a cluster node keeping its append-only file", name, cmd)
		}
		if svc.HealthCheck == nil || len(svc.Volumes) != 1 || svc.Volumes[0].Target != "/data" {
			t.Errorf("%s: want a healthcheck and a volume of its own on /data", name)
		}
	}
	join, ok := project.Services["redis-cluster"]
	if !ok {
		t.Fatal("no redis-cluster service joining the nodes")
	}
	for _, n := range nodes {
		if dep, ok := join.DependsOn[n]; !ok || dep.Condition != "service_healthy" {
			t.Errorf("redis-cluster does not wait for %s to be healthy", n)
		}
	}
	if cmd := strings.Join(join.Command, " "); !strings.Contains(cmd, "--cluster create") || !strings.Contains(cmd, "--cluster-replicas 1") || !strings.Contains(cmd, "getent hosts redis-") {
		t.Errorf("redis-cluster runs %q, want redis-cli --cluster create of the nodes' addresses with a replica each", cmd)
	}
	for _, name := range []string{"api", "logger", "notification", "edge"} {
		if v := project.Services[name].Environment["REDIS_URL"]; v == nil || *v != url {
			t.Errorf("%s: REDIS_URL = %v, want %s", name, v, url)
		}
	}
}

// decodeStrict decodes YAML into v, refusing fields v does not have.
func decodeStrict(doc []byte, v any) error {
	js, err := yaml.YAMLToJSON(doc)
	if err != nil {
		return err
	}
	dec := json.NewDecoder(bytes.NewReader(js))
	dec.DisallowUnknownFields()
	return dec.Decode(v)
}

// kustomization is the part of kustomize's schema these files use; the
// strict decoding catches a misspelt or unsupported field.
type kustomization struct {
	APIVersion string `json:"apiVersion"`
	Kind       string `json:"kind"`
	Namespace  string `json:"namespace,omitempty"`
	Labels     []struct {
		Pairs map[string]string `json:"pairs"`
	} `json:"labels,omitempty"`
	Resources  []string `json:"resources,omitempty"`
	Components []string `json:"components,omitempty"`
	Images     []struct {
		Name   string `json:"name"`
		NewTag string `json:"newTag"`
	} `json:"images,omitempty"`
	SecretGenerator []struct {
		Name     string   `json:"name"`
		Literals []string `json:"literals"`
		Options  struct {
			DisableNameSuffixHash bool `json:"disableNameSuffixHash"`
		} `json:"options"`
	} `json:"secretGenerator,omitempty"`
	Patches []struct {
		Target struct {
			Kind string `json:"kind"`
			Name string `json:"name"`
		} `json:"target"`
		Patch string `json:"patch"`
	} `json:"patches,omitempty"`
}

// walkOverlay checks every manifest an overlay's kustomization reaches,
// through the bases and components it names, and returns the kind/name of each and the
// overlay's own kustomization.
func walkOverlay(t *testing.T, overlay string) (map[string]bool, kustomization) {
	t.Helper()
	seen := map[string]bool{} // kind/name across the base
	var top kustomization
	var walk func(dir string)
	walk = func(dir string) {
		raw, err := os.ReadFile(filepath.Join(dir, "kustomization.yaml"))
		if err != nil {
			t.Fatalf("%s: %v", dir, err)
		}
		var k kustomization
		if err := decodeStrict(raw, &k); err != nil {
			t.Fatalf("%s/kustomization.yaml: %v", dir, err)
		}
		if dir == overlay {
			top = k
		}
		for _, c := range k.Components {
			walk(filepath.Join(dir, c))
		}
		for _, r := range k.Resources {
			p := filepath.Join(dir, r)
			st, err := os.Stat(p)
			if err != nil {
				t.Errorf("%s/kustomization.yaml lists %s, which does not exist", dir, r)
				continue
			}
			if st.IsDir() {
				walk(p)
				continue
			}
			checkManifest(t, p, seen)
		}
	}
	walk(overlay)
	return seen, top
}

func TestKubernetesManifests(t *testing.T) {
	t.Parallel()
	seen, _ := walkOverlay(t, filepath.Join(root, "deploy/k8s/overlays/dev"))
	for _, want := range []string{
		"Deployment/api", "Deployment/logger", "Deployment/notification", "Deployment/edge", "Deployment/redis",
		"Service/api", "Service/edge", "HorizontalPodAutoscaler/edge", "PodDisruptionBudget/edge", "ConfigMap/eventbus-config",
	} {
		if !seen[want] {
			t.Errorf("no %s in the dev overlay", want)
		}
	}
}

// The cluster overlay is the base on an external Redis Cluster: no Redis of
// its own, and a ConfigMap patched to a redis+cluster:// URL of host:port
// nodes and BUS_PARTITIONS.
func TestKubernetesClusterOverlay(t *testing.T) {
	t.Parallel()
	seen, k := walkOverlay(t, filepath.Join(root, "deploy/k8s/overlays/cluster"))
	if seen["Deployment/redis"] {
		t.Error("the cluster overlay runs a Redis of its own; it points at an external cluster")
	}
	for _, want := range []string{"Deployment/api", "Deployment/logger", "Deployment/notification", "Deployment/edge", "ConfigMap/eventbus-config"} {
		if !seen[want] {
			t.Errorf("no %s in the cluster overlay", want)
		}
	}
	if len(k.Patches) != 1 || k.Patches[0].Target.Kind != "ConfigMap" || k.Patches[0].Target.Name != "eventbus-config" {
		t.Fatalf("patches = %+v, want one of ConfigMap eventbus-config", k.Patches)
	}
	var ops []struct {
		Op, Path string
		Value    string
	}
	if err := yaml.Unmarshal([]byte(k.Patches[0].Patch), &ops); err != nil {
		t.Fatalf("patch: %v", err)
	}
	got := map[string]string{}
	for _, op := range ops {
		got[op.Path] = op.Value
	}
	url, ok := strings.CutPrefix(got["/data/REDIS_URL"], "redis+cluster://")
	if !ok {
		t.Fatalf("REDIS_URL = %q, want redis+cluster://host:port,…", got["/data/REDIS_URL"])
	}
	for node := range strings.SplitSeq(url, ",") {
		if host, port, err := net.SplitHostPort(node); err != nil || host == "" || port == "" {
			t.Errorf("REDIS_URL node %q is not host:port", node)
		}
	}
	if n, err := strconv.Atoi(got["/data/BUS_PARTITIONS"]); err != nil || n < 1 {
		t.Errorf("BUS_PARTITIONS = %q, want a number of partitions", got["/data/BUS_PARTITIONS"])
	}
}

// checkManifest decodes every document of a file strictly into its
// k8s.io/api type and checks what every Deployment must have.
func checkManifest(t *testing.T, path string, seen map[string]bool) {
	t.Helper()
	raw, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	for i, doc := range bytes.Split(raw, []byte("\n---\n")) {
		var head struct {
			Kind     string `json:"kind"`
			Metadata struct {
				Name string `json:"name"`
			} `json:"metadata"`
		}
		if err := yaml.Unmarshal(doc, &head); err != nil {
			t.Errorf("%s document %d: %v", path, i, err)
			continue
		}
		var obj any
		switch head.Kind {
		case "Deployment":
			obj = new(appsv1.Deployment)
		case "Service":
			obj = new(corev1.Service)
		case "ConfigMap":
			obj = new(corev1.ConfigMap)
		case "Namespace":
			obj = new(corev1.Namespace)
		case "PersistentVolumeClaim":
			obj = new(corev1.PersistentVolumeClaim)
		case "HorizontalPodAutoscaler":
			obj = new(autoscalingv2.HorizontalPodAutoscaler)
		case "PodDisruptionBudget":
			obj = new(policyv1.PodDisruptionBudget)
		case "StatefulSet":
			obj = new(appsv1.StatefulSet)
		case "Ingress":
			obj = new(networkingv1.Ingress)
		case "NetworkPolicy":
			obj = new(networkingv1.NetworkPolicy)
		case "ServiceMonitor":
			obj = new(serviceMonitor)
		default:
			t.Errorf("%s document %d: kind %q has no check", path, i, head.Kind)
			continue
		}
		if err := decodeStrict(doc, obj); err != nil {
			t.Errorf("%s: %s/%s: %v", path, head.Kind, head.Metadata.Name, err)
			continue
		}
		seen[head.Kind+"/"+head.Metadata.Name] = true
		switch o := obj.(type) {
		case *appsv1.Deployment:
			checkPodSpec(t, path, o.Name, &o.Spec.Template.Spec)
		case *appsv1.StatefulSet:
			checkPodSpec(t, path, o.Name, &o.Spec.Template.Spec)
		}
	}
}

// checkPodSpec checks the pod template of the Deployment or StatefulSet
// name.
func checkPodSpec(t *testing.T, path, name string, spec *corev1.PodSpec) {
	t.Helper()
	if sc := spec.SecurityContext; name != "redis" && (sc == nil || sc.FSGroup == nil || *sc.FSGroup != 65532) {
		t.Errorf("%s: %s has no fsGroup 65532: a fresh volume would not be writable by the service's user", path, name)
	}
	for _, c := range spec.Containers {
		if c.Resources.Requests.Cpu().IsZero() || c.Resources.Limits.Memory().IsZero() {
			t.Errorf("%s: %s has no resource requests and limits", path, c.Name)
		}
		if c.ReadinessProbe == nil || c.LivenessProbe == nil {
			t.Errorf("%s: %s lacks a readiness or liveness probe", path, c.Name)
			continue
		}
		if name == "redis" {
			continue
		}
		if g := c.ReadinessProbe.HTTPGet; g == nil || g.Path != "/readyz" {
			t.Errorf("%s: %s readiness probe is not GET /readyz", path, c.Name)
		}
		if g := c.LivenessProbe.HTTPGet; g == nil || g.Path != "/healthz" {
			t.Errorf("%s: %s liveness probe is not GET /healthz", path, c.Name)
		}
	}
}

// TestNginxConfig runs `nginx -t` on the repository's nginx.conf, with the
// compose service name of the upstream mapped to this machine.
func TestNginxConfig(t *testing.T) {
	t.Parallel()
	nginx, err := exec.LookPath("nginx")
	if err != nil {
		if os.Getenv("EVENTBUS_REQUIRE_NGINX") == "1" {
			t.Fatal("EVENTBUS_REQUIRE_NGINX=1 but nginx is not installed (apt-get install nginx)")
		}
		t.Skip("nginx is not installed (apt-get install nginx)")
	}
	conf, err := os.ReadFile(filepath.Join(root, "deploy/nginx/nginx.conf"))
	if err != nil {
		t.Fatal(err)
	}
	// The test-only hosts mapping: "edge" is the compose service.
	conf = bytes.ReplaceAll(conf, []byte("server edge:8081"), []byte("server 127.0.0.1:8081"))
	conf = bytes.ReplaceAll(conf, []byte("server edge:1883"), []byte("server 127.0.0.1:1883"))
	conf = append(servicetest.NginxModules(t, nginx), conf...)
	dir := t.TempDir()
	path := filepath.Join(dir, "nginx.conf")
	if err := os.WriteFile(path, conf, 0o644); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(nginx, "-t", "-p", dir, "-c", path,
		"-g", "error_log "+filepath.Join(dir, "error.log")+"; pid "+filepath.Join(dir, "nginx.pid")+";").CombinedOutput()
	if err != nil || !strings.Contains(string(out), "test is successful") {
		t.Errorf("nginx -t: %v\n%s", err, out)
	}
}

func TestPrometheusConfig(t *testing.T) {
	t.Parallel()
	raw, err := os.ReadFile(filepath.Join(root, "deploy/prometheus/prometheus.yml"))
	if err != nil {
		t.Fatal(err)
	}
	var cfg struct {
		Global struct {
			ScrapeInterval     string `json:"scrape_interval"`
			EvaluationInterval string `json:"evaluation_interval"`
		} `json:"global"`
		ScrapeConfigs []struct {
			JobName       string `json:"job_name"`
			StaticConfigs []struct {
				Targets []string `json:"targets"`
			} `json:"static_configs"`
			DNSSDConfigs []struct {
				Names []string `json:"names"`
				Type  string   `json:"type"`
				Port  int      `json:"port"`
			} `json:"dns_sd_configs"`
		} `json:"scrape_configs"`
	}
	if err := decodeStrict(raw, &cfg); err != nil {
		t.Fatalf("prometheus.yml: %v", err)
	}
	want := map[string]string{"api": "api:8080", "logger": "logger:8082", "notification": "notification:8083", "edge": "edge:8081"}
	for _, sc := range cfg.ScrapeConfigs {
		var got string
		for _, s := range sc.StaticConfigs {
			got = strings.Join(s.Targets, ",")
		}
		for _, d := range sc.DNSSDConfigs {
			got = strings.Join(d.Names, ",") + ":" + strconv.Itoa(d.Port)
		}
		if want[sc.JobName] != got {
			t.Errorf("job %s scrapes %q, want %q", sc.JobName, got, want[sc.JobName])
		}
		delete(want, sc.JobName)
	}
	if len(want) > 0 {
		t.Errorf("no scrape job for %v", want)
	}
}

// dashboardMetrics lists the metric names the Grafana dashboard queries.
// The end-to-end test checks that running services export each of them.
func dashboardMetrics(t *testing.T) []string {
	t.Helper()
	raw, err := os.ReadFile(filepath.Join(root, "deploy/grafana/dashboards/eventbus.json"))
	if err != nil {
		t.Fatal(err)
	}
	var d struct {
		UID    string
		Panels []struct {
			Title   string
			Targets []struct{ Expr string }
		}
	}
	if err := json.Unmarshal(raw, &d); err != nil {
		t.Fatalf("dashboard: %v", err)
	}
	re := regexp.MustCompile(`eventbus_[a-z_]+`)
	var names []string
	for _, p := range d.Panels {
		for _, tg := range p.Targets {
			names = append(names, re.FindAllString(tg.Expr, -1)...)
		}
	}
	slices.Sort(names)
	return slices.Compact(names)
}

func TestGrafanaProvisioning(t *testing.T) {
	t.Parallel()
	metrics := dashboardMetrics(t)
	for _, want := range []string{
		"eventbus_api_events_published_total", "eventbus_edge_deliveries_total", "eventbus_edge_connections",
		"eventbus_edge_slow_consumer_closes_total", "eventbus_notification_emails_sent_total",
		"eventbus_notification_emails_failed_total", "eventbus_logger_lag_seconds",
	} {
		if !slices.Contains(metrics, want) {
			t.Errorf("the dashboard does not chart %s", want)
		}
	}
	for _, f := range []string{"provisioning/datasources/prometheus.yml", "provisioning/dashboards/eventbus.yml"} {
		raw, err := os.ReadFile(filepath.Join(root, "deploy/grafana", f))
		if err != nil {
			t.Fatal(err)
		}
		var v map[string]any
		if err := yaml.Unmarshal(raw, &v); err != nil || v["apiVersion"] != float64(1) {
			t.Errorf("%s: %v, apiVersion %v", f, err, v["apiVersion"])
		}
	}
}

// TestDockerfileCopiesEveryModule: the image builds with the workspace, so
// every module go.work uses must have its go.mod and go.sum copied before
// `go mod download`.
// The image creates /data owned by its user (nonroot, 65532): a fresh
// named volume mounted there takes that owner, so the logger can write it.
func TestDockerfileGivesDataToItsUser(t *testing.T) {
	t.Parallel()
	dockerfile, err := os.ReadFile(filepath.Join(root, "deploy/docker/Dockerfile"))
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"mkdir -p /out/data", "COPY --from=build --chown=65532:65532 /out/data /data", "USER nonroot:nonroot"} {
		if !strings.Contains(string(dockerfile), want) {
			t.Errorf("the Dockerfile lacks %q", want)
		}
	}
}

func TestDockerfileCopiesEveryModule(t *testing.T) {
	t.Parallel()
	work, err := os.ReadFile(filepath.Join(root, "go.work"))
	if err != nil {
		t.Fatal(err)
	}
	dockerfile, err := os.ReadFile(filepath.Join(root, "deploy/docker/Dockerfile"))
	if err != nil {
		t.Fatal(err)
	}
	uses := regexp.MustCompile(`(?m)^\s+\./(\S+)$`).FindAllStringSubmatch(string(work), -1)
	if len(uses) < 5 {
		t.Fatalf("go.work lists %d modules, want them all", len(uses))
	}
	for _, u := range uses {
		dir := u[1]
		want := "COPY " + dir + "/go.mod " + dir + "/go.sum " + dir + "/"
		if !strings.Contains(string(dockerfile), want) {
			t.Errorf("the Dockerfile lacks %q", want)
		}
	}
}
