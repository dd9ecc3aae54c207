package deploy_test

import (
	"errors"
	"fmt"
	"maps"
	"net/netip"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	autoscalingv2 "k8s.io/api/autoscaling/v2"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	policyv1 "k8s.io/api/policy/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/util/intstr"
	"sigs.k8s.io/kustomize/api/krusty"
	"sigs.k8s.io/kustomize/kyaml/filesys"
)

// The peers the NetworkPolicies of the base expect, with the labels their
// usual charts give them (deploy/k8s/base/networkpolicy.yaml).
var (
	ingressController = peer{ns: "ingress-nginx", pod: map[string]string{"app.kubernetes.io/name": "ingress-nginx"}}
	prometheus        = peer{ns: "monitoring", pod: map[string]string{"app.kubernetes.io/name": "prometheus"}}
	publisher         = peer{ns: "shop", nsLabels: map[string]string{"eventbus.io/publisher": "true"}, pod: map[string]string{"app": "checkout"}}
	stranger          = peer{ns: "elsewhere", pod: map[string]string{"app": "stranger"}}
	// device is a client outside the cluster, as a load balancer passes
	// it on with its own address (externalTrafficPolicy: Local).
	device = peer{addr: netip.MustParseAddr("203.0.113.7")}
)

// redisHeadroom is the factor over the streams' own size that maxmemory
// leaves for what a lagging consumer group holds back past
// BUS_HISTORY_MAXLEN and for every other key (docs/deploy.md).
const redisHeadroom = 2

// overlays says what each overlay under deploy/k8s/overlays must contain;
// an overlay missing here fails TestKubernetesOverlays, so a new one comes
// with its expectations.
var overlays = map[string]struct {
	redis    string // the kind of the Redis it runs, "" for an external one
	monitors bool   // whether it has ServiceMonitors
}{
	"dev":                       {redis: "Deployment"},
	"cluster":                   {monitors: true},
	"production":                {redis: "StatefulSet", monitors: true},
	"production-external-redis": {monitors: true},
}

// TestKubernetesOverlays builds every overlay with kustomize, as
// `kubectl apply -k` would, and checks what it renders.
func TestKubernetesOverlays(t *testing.T) {
	t.Parallel()
	dirs, err := filepath.Glob(filepath.Join(root, "deploy/k8s/overlays/*"))
	if err != nil || len(dirs) == 0 {
		t.Fatalf("no overlays: %v", err)
	}
	for _, dir := range dirs {
		name := filepath.Base(dir)
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			want, ok := overlays[name]
			if !ok {
				t.Fatalf("overlay %s has no entry in overlays (k8s_test.go)", name)
			}
			r, err := build(dir)
			if err != nil {
				t.Fatal(err)
			}
			for _, err := range checkRendered(r) {
				t.Error(err)
			}
			var redis []string
			for _, w := range r.workloads() {
				if w.name == "redis" {
					redis = append(redis, w.kind)
				}
			}
			if want.redis == "" && len(redis) > 0 || want.redis != "" && !slices.Equal(redis, []string{want.redis}) {
				t.Errorf("redis runs as %v, want %q", redis, want.redis)
			}
			if got := len(r.monitors) > 0; got != want.monitors {
				t.Errorf("has ServiceMonitors: %v, want %v", got, want.monitors)
			}
		})
	}
}

// The production overlay's Redis: what TestKubernetesOverlays checks of
// every Redis, spelt out for this one, with the numbers.
func TestKubernetesProductionRedis(t *testing.T) {
	t.Parallel()
	r, err := build(filepath.Join(root, "deploy/k8s/overlays/production"))
	if err != nil {
		t.Fatal(err)
	}
	i := slices.IndexFunc(r.statefulSets, func(s *appsv1.StatefulSet) bool { return s.Name == "redis" })
	if i < 0 {
		t.Fatal("no StatefulSet redis")
	}
	s := r.statefulSets[i]
	args := redisArgs(s.Spec.Template.Spec.Containers[0].Args)
	for k, v := range map[string]string{"appendonly": "yes", "appendfsync": "everysec", "maxmemory-policy": "noeviction"} {
		if args[k] != v {
			t.Errorf("redis --%s = %q, want %q", k, args[k], v)
		}
	}
	if img := s.Spec.Template.Spec.Containers[0].Image; !strings.HasPrefix(img, "redis:7") {
		t.Errorf("redis image = %s, want redis:7", img)
	}
	if len(s.Spec.VolumeClaimTemplates) != 1 {
		t.Errorf("redis has %d volume claim templates, want 1", len(s.Spec.VolumeClaimTemplates))
	}
	maxlen, err := strconv.Atoi(r.configMaps["eventbus-config"].Data["BUS_HISTORY_MAXLEN"])
	if err != nil {
		t.Fatalf("the production ConfigMap sets no BUS_HISTORY_MAXLEN: %v", err)
	}
	ns, _ := strconv.Atoi(s.Annotations[sizedFor])
	_, perEvent, err := historyFigures()
	if err != nil {
		t.Fatal(err)
	}
	want := ns * maxlen * perEvent * redisHeadroom
	t.Logf("maxmemory %s = %d namespaces × %d events × %d B × %d = %d", args["maxmemory"], ns, maxlen, perEvent, redisHeadroom, want)
	if args["maxmemory"] != strconv.Itoa(want) {
		t.Errorf("redis --maxmemory = %s, want %d", args["maxmemory"], want)
	}
	if got := r.configMaps["eventbus-config"].Data["REDIS_URL"]; got != "redis://redis-0.redis:6379/0" {
		t.Errorf("REDIS_URL = %s, want the StatefulSet's pod redis-0.redis", got)
	}
}

// The checks refuse what they are there to refuse: each case is an overlay
// on top of overlays/production that breaks one thing.
func TestKubernetesChecksRefuseBadVariants(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name, kustomization, want string
	}{
		{
			name: "an image at :latest",
			kustomization: `images:
  - name: eventbus/edge
    newTag: latest`,
			want: "Deployment/edge: image eventbus/edge:latest is not pinned",
		},
		{
			name: "an untagged image",
			kustomization: `patches:
  - target: {kind: StatefulSet, name: redis}
    patch: |-
      - {op: replace, path: /spec/template/spec/containers/0/image, value: redis}`,
			want: "StatefulSet/redis: image redis has no tag",
		},
		{
			name: "images of two releases",
			kustomization: `images:
  - name: eventbus/api
    newTag: 0.1.9`,
			want: "the eventbus images carry tags [0.1.9 0.2.0], want one release",
		},
		{
			name: "replicas on the edge the HPA scales",
			kustomization: `patches:
  - target: {kind: Deployment, name: edge}
    patch: |-
      - {op: add, path: /spec/replicas, value: 3}`,
			want: "Deployment/edge sets replicas (3), which every apply resets under HorizontalPodAutoscaler/edge",
		},
		{
			name: "eviction allowed",
			kustomization: `patches:
  - target: {kind: StatefulSet, name: redis}
    patch: |-
      - {op: replace, path: /spec/template/spec/containers/0/args/9, value: allkeys-lru}`,
			want: "StatefulSet/redis: --maxmemory-policy allkeys-lru, want noeviction",
		},
		{
			name: "no append-only file",
			kustomization: `patches:
  - target: {kind: StatefulSet, name: redis}
    patch: |-
      - {op: replace, path: /spec/template/spec/containers/0/args/1, value: "no"}`,
			want: "StatefulSet/redis: --appendonly no, want yes",
		},
		{
			name: "history raised without maxmemory",
			kustomization: `patches:
  - target: {kind: ConfigMap, name: eventbus-config}
    patch: |-
      - {op: replace, path: /data/BUS_HISTORY_MAXLEN, value: "1000000"}`,
			want: "StatefulSet/redis: --maxmemory 480000000, want 8 namespaces × 1000000 events × 300 B × 2 = 4800000000",
		},
		{
			name: "no persistent volume",
			kustomization: `patches:
  - target: {kind: StatefulSet, name: redis}
    patch: |-
      - {op: remove, path: /spec/volumeClaimTemplates}`,
			want: "StatefulSet/redis: /data is on no persistent volume",
		},
		{
			name: "no room for an AOF rewrite",
			kustomization: `patches:
  - target: {kind: StatefulSet, name: redis}
    patch: |-
      - {op: replace, path: /spec/template/spec/containers/0/resources/limits/memory, value: 512Mi}`,
			want: "StatefulSet/redis: memory limit 512Mi is under twice maxmemory (960000000)",
		},
		{
			name: "Prometheus shut out",
			kustomization: `patches:
  - patch: |-
      $patch: delete
      apiVersion: networking.k8s.io/v1
      kind: NetworkPolicy
      metadata:
        name: allow-prometheus`,
			want: "monitoring/prometheus cannot reach Deployment/logger port 8082 (prometheus.io/port)",
		},
		{
			name: "no default deny",
			kustomization: `patches:
  - patch: |-
      $patch: delete
      apiVersion: networking.k8s.io/v1
      kind: NetworkPolicy
      metadata:
        name: default-deny-ingress`,
			want: "no default-deny NetworkPolicy",
		},
		{
			name: "a pod no policy selects",
			kustomization: `patches:
  - patch: |-
      $patch: delete
      apiVersion: networking.k8s.io/v1
      kind: NetworkPolicy
      metadata:
        name: default-deny-ingress
  - target: {kind: NetworkPolicy, name: allow-prometheus}
    patch: |-
      - {op: replace, path: /spec/podSelector/matchExpressions/0/values, value: [api, edge]}`,
			want: "elsewhere/stranger can reach Deployment/logger port 8082: no NetworkPolicy denies it",
		},
		{
			name: "Redis open to the ingress controller",
			kustomization: `patches:
  - target: {kind: NetworkPolicy, name: allow-redis}
    patch: |-
      - {op: replace, path: /spec/ingress/0/from/0/podSelector, value: {}}
      - op: add
        path: /spec/ingress/0/from/0/namespaceSelector
        value: {}`,
			want: "ingress-nginx/ingress-nginx can reach StatefulSet/redis port 6379, which no Ingress routes to",
		},
		{
			name: "MQTT shut out",
			kustomization: `components:
  - ../../components/mqtt
patches:
  - patch: |-
      $patch: delete
      apiVersion: networking.k8s.io/v1
      kind: NetworkPolicy
      metadata:
        name: allow-mqtt-devices`,
			want: "a device at 203.0.113.7 cannot reach Deployment/edge port 1883, which Service/edge-mqtt (LoadBalancer) exposes",
		},
		{
			name: "the edge's HTTP port open to devices",
			kustomization: `components:
  - ../../components/mqtt
patches:
  - target: {kind: NetworkPolicy, name: allow-mqtt-devices}
    patch: |-
      - {op: remove, path: /spec/ingress/0/ports}`,
			want: "a device at 203.0.113.7 can reach Deployment/edge port 8081, which no LoadBalancer Service exposes",
		},
		{
			name: "a service without a ServiceMonitor",
			kustomization: `patches:
  - patch: |-
      $patch: delete
      apiVersion: monitoring.coreos.com/v1
      kind: ServiceMonitor
      metadata:
        name: notification`,
			want: "Service/notification: no ServiceMonitor scrapes /metrics on port http",
		},
		{
			name: "the demo's edge shut out of the notification service",
			kustomization: `patches:
  - target: {kind: Deployment, name: edge}
    patch: |-
      - op: add
        path: /spec/template/spec/containers/0/env/-
        value: {name: EDGE_DEMO_NOTIFY_URL, value: "http://notification:8083"}`,
			want: "Deployment/edge cannot reach Deployment/notification port 8083, its EDGE_DEMO_NOTIFY_URL",
		},
		{
			name: "WebSockets cut after a minute",
			kustomization: `patches:
  - target: {kind: Ingress, name: edge}
    patch: |-
      - {op: remove, path: /metadata/annotations/nginx.ingress.kubernetes.io~1proxy-read-timeout}`,
			want: `Ingress/edge: nginx.ingress.kubernetes.io/proxy-read-timeout = "", want at least 3600`,
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			r := buildOnProduction(t, tc.kustomization)
			errs := checkRendered(r)
			if !slices.ContainsFunc(errs, func(err error) bool { return strings.Contains(err.Error(), tc.want) }) {
				t.Errorf("checkRendered(production with %s) = %v, want %q", tc.name, errs, tc.want)
			}
		})
	}
}

// buildOnProduction builds an overlay of its own on top of
// overlays/production, in a copy of deploy/k8s, with kustomization's
// lines added to its kustomization.yaml.
func buildOnProduction(t *testing.T, kustomization string) *rendered {
	t.Helper()
	dir := t.TempDir()
	if err := os.CopyFS(filepath.Join(dir, "k8s"), os.DirFS(filepath.Join(root, "deploy/k8s"))); err != nil {
		t.Fatal(err)
	}
	overlay := filepath.Join(dir, "k8s/overlays/variant")
	if err := os.Mkdir(overlay, 0o755); err != nil {
		t.Fatal(err)
	}
	k := "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\nresources:\n  - ../production\n" + kustomization + "\n"
	if err := os.WriteFile(filepath.Join(overlay, "kustomization.yaml"), []byte(k), 0o644); err != nil {
		t.Fatal(err)
	}
	r, err := build(overlay)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// MQTT reaches the edge from outside the cluster once an overlay adds
// components/mqtt (TCP) or components/mqtt-tls (TLS), each through a load
// balancer of its own that keeps clients' addresses, with no PROXY header
// trusted on the MQTT listeners; TLS's certificate and key are files of a
// mounted Secret that EDGE_TLS_CERT and EDGE_TLS_KEY name. The base
// exposes no MQTT, and its pods listen for plain MQTT only with
// components/mqtt.
func TestKubernetesMQTT(t *testing.T) {
	t.Parallel()
	base := buildOnProduction(t, "")
	if i := slices.IndexFunc(base.services, func(s *corev1.Service) bool { return s.Spec.Type == corev1.ServiceTypeLoadBalancer }); i >= 0 {
		t.Errorf("production exposes Service/%s on a load balancer without an MQTT component", base.services[i].Name)
	}
	if got := edgeEnv(base)["EDGE_MQTT_ADDR"]; got != "off" {
		t.Errorf("production's edge has EDGE_MQTT_ADDR %q, want off: no plain MQTT in the pods without components/mqtt", got)
	}
	tls := buildOnProduction(t, "components:\n  - ../../components/mqtt-tls")
	for _, err := range checkRendered(tls) {
		t.Error(err)
	}
	if got := edgeEnv(tls)["EDGE_MQTT_ADDR"]; got != "off" {
		t.Errorf("with components/mqtt-tls alone, EDGE_MQTT_ADDR = %q, want off", got)
	}
	if _, _, err := tls.resolve("edge-mqtt", networkingv1.ServiceBackendPort{Name: "mqtt"}); err == nil {
		t.Error("components/mqtt-tls alone exposes plain MQTT")
	}

	r := buildOnProduction(t, "components:\n  - ../../components/mqtt\n  - ../../components/mqtt-tls")
	for _, err := range checkRendered(r) {
		t.Error(err)
	}
	env := edgeEnv(r)
	for _, tc := range []struct {
		service, port, addrVar, addr string
		want                         int32
	}{{"edge-mqtt", "mqtt", "EDGE_MQTT_ADDR", ":1883", 1883}, {"edge-mqtts", "mqtts", "EDGE_MQTTS_ADDR", ":8883", 8883}} {
		if env[tc.addrVar] != tc.addr {
			t.Errorf("%s = %q, want %s", tc.addrVar, env[tc.addrVar], tc.addr)
		}
		w, port, err := r.resolve(tc.service, networkingv1.ServiceBackendPort{Name: tc.port})
		if err != nil {
			t.Errorf("Service/%s port %s: %v", tc.service, tc.port, err)
			continue
		}
		if w.name != "edge" || port.ContainerPort != tc.want {
			t.Errorf("Service/%s port %s reaches %s port %d, want Deployment/edge port %d", tc.service, tc.port, w, port.ContainerPort, tc.want)
		}
		i := slices.IndexFunc(r.services, func(s *corev1.Service) bool { return s.Name == tc.service })
		if p := r.services[i].Spec.ExternalTrafficPolicy; p != corev1.ServiceExternalTrafficPolicyLocal {
			t.Errorf("Service/%s externalTrafficPolicy = %q, want Local: the edge's per-address bounds need each client's own address", tc.service, p)
		}
	}
	if env["EDGE_MQTT_TRUSTED_PROXIES"] != "none" {
		t.Errorf("EDGE_MQTT_TRUSTED_PROXIES = %q, want none: devices reach MQTT directly, and a client in EDGE_TRUSTED_PROXIES's network could name any address", env["EDGE_MQTT_TRUSTED_PROXIES"])
	}
	j := slices.IndexFunc(r.deployments, func(d *appsv1.Deployment) bool { return d.Name == "edge" })
	pod := r.deployments[j].Spec.Template.Spec
	for _, v := range []string{"EDGE_TLS_CERT", "EDGE_TLS_KEY"} {
		file := env[v]
		mounted := slices.ContainsFunc(pod.Containers[0].VolumeMounts, func(m corev1.VolumeMount) bool {
			if filepath.Dir(file) != m.MountPath {
				return false
			}
			k := slices.IndexFunc(pod.Volumes, func(v corev1.Volume) bool { return v.Name == m.Name })
			return k >= 0 && pod.Volumes[k].Secret != nil && pod.Volumes[k].Secret.SecretName == "eventbus-mqtt-tls"
		})
		if !mounted {
			t.Errorf("%s = %q is not a file of the mounted Secret eventbus-mqtt-tls", v, file)
		}
	}
}

// edgeEnv is the environment the edge's container gets: the ConfigMaps it
// takes whole, then its own variables over them.
func edgeEnv(r *rendered) map[string]string {
	env := map[string]string{}
	j := slices.IndexFunc(r.deployments, func(d *appsv1.Deployment) bool { return d.Name == "edge" })
	c := r.deployments[j].Spec.Template.Spec.Containers[0]
	for _, from := range c.EnvFrom {
		if from.ConfigMapRef != nil {
			maps.Copy(env, r.configMaps[from.ConfigMapRef.Name].Data)
		}
	}
	for _, e := range c.Env {
		env[e.Name] = e.Value
	}
	return env
}

// rendered is an overlay as kustomize builds it, each object decoded
// strictly into its type.
type rendered struct {
	namespace    string
	configMaps   map[string]*corev1.ConfigMap
	deployments  []*appsv1.Deployment
	statefulSets []*appsv1.StatefulSet
	services     []*corev1.Service
	hpas         []*autoscalingv2.HorizontalPodAutoscaler
	ingresses    []*networkingv1.Ingress
	policies     []*networkingv1.NetworkPolicy
	monitors     []*serviceMonitor
}

// serviceMonitor is the part of the Prometheus operator's
// monitoring.coreos.com/v1 ServiceMonitor these files use.
type serviceMonitor struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata"`
	Spec              struct {
		Selector  metav1.LabelSelector `json:"selector"`
		Endpoints []monitorEndpoint    `json:"endpoints"`
	} `json:"spec"`
}

type monitorEndpoint struct {
	Port     string `json:"port"`
	Path     string `json:"path,omitempty"`
	Interval string `json:"interval,omitempty"`
}

// build runs kustomize on an overlay and decodes what it renders.
// kustomizing serialises kustomize builds: kustomize keeps its OpenAPI
// schema in package globals that parallel builds race on
// (kubernetes-sigs/kustomize#5805).
var kustomizing sync.Mutex

func build(dir string) (*rendered, error) {
	kustomizing.Lock()
	defer kustomizing.Unlock()
	k := krusty.MakeKustomizer(krusty.MakeDefaultOptions())
	m, err := k.Run(filesys.MakeFsOnDisk(), dir)
	if err != nil {
		return nil, fmt.Errorf("kustomize build %s: %w", dir, err)
	}
	r := &rendered{configMaps: map[string]*corev1.ConfigMap{}}
	for _, res := range m.Resources() {
		doc, err := res.AsYAML()
		if err != nil {
			return nil, err
		}
		var obj any
		switch res.GetKind() {
		case "Namespace":
			obj = new(corev1.Namespace)
		case "Secret":
			obj = new(corev1.Secret)
		case "PersistentVolumeClaim":
			obj = new(corev1.PersistentVolumeClaim)
		case "PodDisruptionBudget":
			obj = new(policyv1.PodDisruptionBudget)
		case "ConfigMap":
			obj = new(corev1.ConfigMap)
		case "Deployment":
			obj = new(appsv1.Deployment)
		case "StatefulSet":
			obj = new(appsv1.StatefulSet)
		case "Service":
			obj = new(corev1.Service)
		case "HorizontalPodAutoscaler":
			obj = new(autoscalingv2.HorizontalPodAutoscaler)
		case "Ingress":
			obj = new(networkingv1.Ingress)
		case "NetworkPolicy":
			obj = new(networkingv1.NetworkPolicy)
		case "ServiceMonitor":
			obj = new(serviceMonitor)
		default:
			return nil, fmt.Errorf("%s renders %s/%s, a kind with no check", dir, res.GetKind(), res.GetName())
		}
		if err := decodeStrict(doc, obj); err != nil {
			return nil, fmt.Errorf("%s: %s/%s: %w", dir, res.GetKind(), res.GetName(), err)
		}
		if ns := res.GetNamespace(); ns != "" {
			r.namespace = ns
		}
		switch o := obj.(type) {
		case *corev1.ConfigMap:
			r.configMaps[o.Name] = o
		case *appsv1.Deployment:
			r.deployments = append(r.deployments, o)
		case *appsv1.StatefulSet:
			r.statefulSets = append(r.statefulSets, o)
		case *corev1.Service:
			r.services = append(r.services, o)
		case *autoscalingv2.HorizontalPodAutoscaler:
			r.hpas = append(r.hpas, o)
		case *networkingv1.Ingress:
			r.ingresses = append(r.ingresses, o)
		case *networkingv1.NetworkPolicy:
			r.policies = append(r.policies, o)
		case *serviceMonitor:
			r.monitors = append(r.monitors, o)
		}
	}
	if r.namespace == "" {
		return nil, fmt.Errorf("%s puts nothing in a namespace", dir)
	}
	return r, nil
}

// workload is a Deployment or a StatefulSet, seen through its pod template.
type workload struct {
	kind, name  string
	annotations map[string]string // the workload's own
	pod         *corev1.PodTemplateSpec
	claims      []corev1.PersistentVolumeClaim // a StatefulSet's volumeClaimTemplates
	serviceName string                         // a StatefulSet's
}

func (w workload) String() string { return w.kind + "/" + w.name }

func (r *rendered) workloads() []workload {
	var ws []workload
	for _, d := range r.deployments {
		ws = append(ws, workload{kind: "Deployment", name: d.Name, annotations: d.Annotations, pod: &d.Spec.Template})
	}
	for _, s := range r.statefulSets {
		ws = append(ws, workload{kind: "StatefulSet", name: s.Name, annotations: s.Annotations,
			pod: &s.Spec.Template, claims: s.Spec.VolumeClaimTemplates, serviceName: s.Spec.ServiceName})
	}
	return ws
}

// checkRendered returns every problem it finds in a rendered overlay.
func checkRendered(r *rendered) []error {
	return slices.Concat(checkImages(r), checkHPAReplicas(r), checkIngresses(r),
		checkNetworkPolicies(r), checkServiceMonitors(r), checkRedis(r))
}

var version = regexp.MustCompile(`^v?[0-9]+\.[0-9]+\.[0-9]+(-[0-9A-Za-z.-]+)?$`)

// checkImages: every container image has a tag other than latest (or a
// digest), and the eventbus images are one release, a version.
func checkImages(r *rendered) []error {
	var errs []error
	tags := map[string]bool{}
	for _, w := range r.workloads() {
		for _, c := range slices.Concat(w.pod.Spec.InitContainers, w.pod.Spec.Containers) {
			if strings.Contains(c.Image, "@sha256:") {
				continue
			}
			name, tag := c.Image, ""
			if i := strings.LastIndex(c.Image, ":"); i > strings.LastIndex(c.Image, "/") {
				name, tag = c.Image[:i], c.Image[i+1:]
			}
			switch tag {
			case "":
				errs = append(errs, fmt.Errorf("%s: image %s has no tag: it runs whatever latest is when a node pulls it", w, c.Image))
			case "latest":
				errs = append(errs, fmt.Errorf("%s: image %s is not pinned: pods on different nodes run different releases", w, c.Image))
			}
			if strings.HasSuffix(name, "eventbus/"+c.Name) {
				tags[tag] = true
			}
		}
	}
	if got := slices.Sorted(maps.Keys(tags)); len(got) != 1 {
		errs = append(errs, fmt.Errorf("the eventbus images carry tags %v, want one release", got))
	} else if !version.MatchString(got[0]) && got[0] != "latest" {
		errs = append(errs, fmt.Errorf("the eventbus images are tagged %q, want a version such as 0.2.0", got[0]))
	}
	return errs
}

// checkHPAReplicas: a Deployment an HPA scales sets no replicas, or every
// apply would reset the count the HPA chose.
func checkHPAReplicas(r *rendered) []error {
	var errs []error
	for _, h := range r.hpas {
		ref := h.Spec.ScaleTargetRef
		i := slices.IndexFunc(r.deployments, func(d *appsv1.Deployment) bool { return ref.Kind == "Deployment" && d.Name == ref.Name })
		if i < 0 {
			errs = append(errs, fmt.Errorf("HorizontalPodAutoscaler/%s scales %s/%s, which is not here", h.Name, ref.Kind, ref.Name))
			continue
		}
		if n := r.deployments[i].Spec.Replicas; n != nil {
			errs = append(errs, fmt.Errorf("Deployment/%s sets replicas (%d), which every apply resets under HorizontalPodAutoscaler/%s", ref.Name, *n, h.Name))
		}
	}
	return errs
}

// edgeAnnotations are what WebSocket, MQTT and SSE connections need of
// ingress-nginx: hour-long reads and sends, and no buffering of the stream.
var edgeAnnotations = map[string]string{
	"nginx.ingress.kubernetes.io/proxy-read-timeout": "3600",
	"nginx.ingress.kubernetes.io/proxy-send-timeout": "3600",
	"nginx.ingress.kubernetes.io/proxy-buffering":    "off",
}

// checkIngresses: the api and the edge are routed, the edge with its
// long-lived connections' annotations, and every backend exists.
func checkIngresses(r *rendered) []error {
	var errs []error
	routed := map[string]bool{}
	for _, ing := range r.ingresses {
		for _, b := range backends(ing) {
			if _, _, err := r.resolve(b.Name, b.Port); err != nil {
				errs = append(errs, fmt.Errorf("Ingress/%s: %w", ing.Name, err))
			}
			routed[b.Name] = true
			if b.Name != "edge" {
				continue
			}
			for k, want := range edgeAnnotations {
				got := ing.Annotations[k]
				if n, err := strconv.Atoi(want); err == nil {
					if m, err := strconv.Atoi(got); err != nil || m < n {
						errs = append(errs, fmt.Errorf("Ingress/%s: %s = %q, want at least %d", ing.Name, k, got, n))
					}
				} else if got != want {
					errs = append(errs, fmt.Errorf("Ingress/%s: %s = %q, want %q", ing.Name, k, got, want))
				}
			}
		}
	}
	for _, s := range []string{"api", "edge"} {
		if !routed[s] {
			errs = append(errs, fmt.Errorf("no Ingress routes to Service/%s", s))
		}
	}
	return errs
}

func backends(ing *networkingv1.Ingress) []*networkingv1.IngressServiceBackend {
	var bs []*networkingv1.IngressServiceBackend
	for _, rule := range ing.Spec.Rules {
		if rule.HTTP == nil {
			continue
		}
		for _, p := range rule.HTTP.Paths {
			if p.Backend.Service != nil {
				bs = append(bs, p.Backend.Service)
			}
		}
	}
	return bs
}

// resolve finds the workload behind a Service port and the container port
// it forwards to.
func (r *rendered) resolve(service string, port networkingv1.ServiceBackendPort) (workload, corev1.ContainerPort, error) {
	i := slices.IndexFunc(r.services, func(s *corev1.Service) bool { return s.Name == service })
	if i < 0 {
		return workload{}, corev1.ContainerPort{}, fmt.Errorf("no Service/%s", service)
	}
	svc := r.services[i]
	j := slices.IndexFunc(svc.Spec.Ports, func(p corev1.ServicePort) bool {
		return port.Name != "" && p.Name == port.Name || port.Name == "" && p.Port == port.Number
	})
	if j < 0 {
		return workload{}, corev1.ContainerPort{}, fmt.Errorf("Service/%s has no port %v", service, port)
	}
	target := svc.Spec.Ports[j].TargetPort
	for _, w := range r.workloads() {
		if len(svc.Spec.Selector) == 0 || !labels.SelectorFromSet(svc.Spec.Selector).Matches(labels.Set(w.pod.Labels)) {
			continue
		}
		for _, c := range w.pod.Spec.Containers {
			for _, cp := range c.Ports {
				if target.Type == intstr.String && cp.Name == target.StrVal || target.Type == intstr.Int && cp.ContainerPort == target.IntVal {
					return w, cp, nil
				}
			}
		}
	}
	return workload{}, corev1.ContainerPort{}, fmt.Errorf("Service/%s port %v reaches no container port", service, port)
}

// peer is a pod, or with addr a client outside the cluster, that may try
// to connect to the overlay's pods.
type peer struct {
	ns       string
	nsLabels map[string]string
	pod      map[string]string
	addr     netip.Addr // a client outside the cluster: only ipBlocks match it
}

// String names the peer by its namespace and app label, or its address.
func (p peer) String() string {
	if p.addr.IsValid() {
		return "a device at " + p.addr.String()
	}
	name, ok := p.pod["app.kubernetes.io/name"]
	if !ok {
		name = p.pod["app"]
	}
	return p.ns + "/" + name
}

func (p peer) namespaceLabels() labels.Set {
	l := labels.Set{"kubernetes.io/metadata.name": p.ns}
	for k, v := range p.nsLabels {
		l[k] = v
	}
	return l
}

// admits says whether the overlay's NetworkPolicies let from connect to
// port of w's pods, as Kubernetes reads them: a pod no policy selects for
// ingress takes every connection; one that some do takes what one of their
// rules allows.
func (r *rendered) admits(from peer, w workload, port corev1.ContainerPort) bool {
	selected := false
	for _, p := range r.policies {
		if !slices.Contains(p.Spec.PolicyTypes, networkingv1.PolicyTypeIngress) && len(p.Spec.PolicyTypes) > 0 {
			continue
		}
		if !selects(&p.Spec.PodSelector, w.pod.Labels) {
			continue
		}
		selected = true
		for _, rule := range p.Spec.Ingress {
			if r.peerMatches(rule.From, from) && portMatches(rule.Ports, port) {
				return true
			}
		}
	}
	return !selected
}

func selects(s *metav1.LabelSelector, l map[string]string) bool {
	sel, err := metav1.LabelSelectorAsSelector(s)
	return err == nil && sel.Matches(labels.Set(l))
}

func (r *rendered) peerMatches(peers []networkingv1.NetworkPolicyPeer, from peer) bool {
	if len(peers) == 0 {
		return true
	}
	for _, p := range peers {
		switch {
		case p.IPBlock != nil:
			// Only a client outside the cluster is judged by address here:
			// whether an ipBlock matches pods' addresses depends on the
			// network plugin.
			if from.addr.IsValid() && inBlock(p.IPBlock, from.addr) {
				return true
			}
		case from.addr.IsValid():
			// Selectors match pods, never a client outside.
		case p.NamespaceSelector == nil:
			if from.ns == r.namespace && selects(p.PodSelector, from.pod) {
				return true
			}
		default:
			if selects(p.NamespaceSelector, from.namespaceLabels()) && (p.PodSelector == nil || selects(p.PodSelector, from.pod)) {
				return true
			}
		}
	}
	return false
}

// inBlock says whether addr lies in b's CIDR and outside its exceptions.
func inBlock(b *networkingv1.IPBlock, addr netip.Addr) bool {
	in := func(cidr string) bool {
		p, err := netip.ParsePrefix(cidr)
		return err == nil && p.Contains(addr)
	}
	return in(b.CIDR) && !slices.ContainsFunc(b.Except, in)
}

func portMatches(ports []networkingv1.NetworkPolicyPort, port corev1.ContainerPort) bool {
	if len(ports) == 0 {
		return true
	}
	for _, p := range ports {
		if p.Protocol != nil && *p.Protocol != corev1.ProtocolTCP {
			continue
		}
		switch {
		case p.Port == nil,
			p.Port.Type == intstr.Int && p.Port.IntVal == port.ContainerPort,
			p.Port.Type == intstr.String && p.Port.StrVal == port.Name:
			return true
		}
	}
	return false
}

// checkNetworkPolicies: nothing from elsewhere in the cluster reaches any
// pod (as far as selectors say: whether an ipBlock for devices also
// matches pods depends on the network plugin); a device outside reaches
// what a LoadBalancer Service exposes and nothing else; the ingress controller reaches what the Ingresses route
// to and nothing else;
// Prometheus reaches each service's metrics port; every service reaches an
// in-namespace Redis; labelled namespaces reach the api; and the demo's
// edge reaches the api and the notification service it passes the page's
// requests on to.
func checkNetworkPolicies(r *rendered) []error {
	var errs []error
	if !slices.ContainsFunc(r.policies, func(p *networkingv1.NetworkPolicy) bool {
		return len(p.Spec.PodSelector.MatchLabels) == 0 && len(p.Spec.PodSelector.MatchExpressions) == 0 &&
			slices.Equal(p.Spec.PolicyTypes, []networkingv1.PolicyType{networkingv1.PolicyTypeIngress}) && len(p.Spec.Ingress) == 0
	}) {
		errs = append(errs, errors.New("no default-deny NetworkPolicy (every pod, ingress, no rule): a pod no other policy selects takes any connection"))
	}
	ingressRouted := map[string]bool{} // workload/port
	for _, ing := range r.ingresses {
		for _, b := range backends(ing) {
			w, port, err := r.resolve(b.Name, b.Port)
			if err != nil {
				continue // checkIngresses reports it
			}
			ingressRouted[fmt.Sprint(w, port.ContainerPort)] = true
			if !r.admits(ingressController, w, port) {
				errs = append(errs, fmt.Errorf("%s cannot reach %s port %d, which Ingress/%s routes to", ingressController, w, port.ContainerPort, ing.Name))
			}
		}
	}
	exposed := map[string]bool{} // workload/port
	for _, svc := range r.services {
		if svc.Spec.Type != corev1.ServiceTypeLoadBalancer {
			continue
		}
		for _, sp := range svc.Spec.Ports {
			w, port, err := r.resolve(svc.Name, networkingv1.ServiceBackendPort{Name: sp.Name})
			if err != nil {
				errs = append(errs, err)
				continue
			}
			exposed[fmt.Sprint(w, port.ContainerPort)] = true
			if !r.admits(device, w, port) {
				errs = append(errs, fmt.Errorf("%s cannot reach %s port %d, which Service/%s (LoadBalancer) exposes", device, w, port.ContainerPort, svc.Name))
			}
		}
	}
	redis, redisPort, redisErr := r.resolve("redis", networkingv1.ServiceBackendPort{Number: 6379})
	for _, w := range r.workloads() {
		for _, c := range w.pod.Spec.Containers {
			for _, port := range c.Ports {
				if !exposed[fmt.Sprint(w, port.ContainerPort)] && r.admits(device, w, port) {
					errs = append(errs, fmt.Errorf("%s can reach %s port %d, which no LoadBalancer Service exposes", device, w, port.ContainerPort))
				}
				if r.admits(stranger, w, port) {
					errs = append(errs, fmt.Errorf("%s can reach %s port %d: no NetworkPolicy denies it", stranger, w, port.ContainerPort))
				}
				if !ingressRouted[fmt.Sprint(w, port.ContainerPort)] && r.admits(ingressController, w, port) {
					errs = append(errs, fmt.Errorf("%s can reach %s port %d, which no Ingress routes to", ingressController, w, port.ContainerPort))
				}
				if p, ok := w.pod.Annotations["prometheus.io/port"]; ok && p == strconv.Itoa(int(port.ContainerPort)) && !r.admits(prometheus, w, port) {
					errs = append(errs, fmt.Errorf("%s cannot reach %s port %d (prometheus.io/port)", prometheus, w, port.ContainerPort))
				}
				if w.name == "api" && !r.admits(publisher, w, port) {
					errs = append(errs, fmt.Errorf("%s (a namespace labelled eventbus.io/publisher=true) cannot reach %s port %d", publisher, w, port.ContainerPort))
				}
			}
		}
		if w.name == "redis" {
			continue
		}
		self := peer{ns: r.namespace, pod: w.pod.Labels}
		if redisErr == nil && !r.admits(self, redis, redisPort) {
			errs = append(errs, fmt.Errorf("%s cannot reach Redis (%s port %d)", w, redis, redisPort.ContainerPort))
		}
		for _, c := range w.pod.Spec.Containers {
			for _, e := range c.Env {
				if e.Name != "EDGE_DEMO_API_URL" && e.Name != "EDGE_DEMO_NOTIFY_URL" {
					continue
				}
				u, err := url.Parse(e.Value)
				if err != nil {
					errs = append(errs, fmt.Errorf("%s: %s %q: %w", w, e.Name, e.Value, err))
					continue
				}
				n, _ := strconv.Atoi(u.Port())
				target, port, err := r.resolve(u.Hostname(), networkingv1.ServiceBackendPort{Number: int32(n)})
				if err != nil {
					errs = append(errs, fmt.Errorf("%s: %s: %w", w, e.Name, err))
				} else if !r.admits(self, target, port) {
					errs = append(errs, fmt.Errorf("%s cannot reach %s port %d, its %s", w, target, port.ContainerPort, e.Name))
				}
			}
		}
	}
	return errs
}

// checkServiceMonitors: where an overlay has ServiceMonitors, every
// eventbus Service's port serving /metrics (the container port its pods'
// prometheus.io/port names) is scraped by one.
func checkServiceMonitors(r *rendered) []error {
	if len(r.monitors) == 0 {
		return nil
	}
	var errs []error
	for _, svc := range r.services {
		if svc.Name == "redis" {
			continue
		}
		for _, sp := range svc.Spec.Ports {
			w, port, err := r.resolve(svc.Name, networkingv1.ServiceBackendPort{Name: sp.Name})
			if err != nil {
				errs = append(errs, err)
				continue
			}
			if w.pod.Annotations["prometheus.io/port"] != strconv.Itoa(int(port.ContainerPort)) {
				continue // not the metrics port
			}
			scraped := slices.ContainsFunc(r.monitors, func(m *serviceMonitor) bool {
				return selects(&m.Spec.Selector, svc.Labels) && slices.ContainsFunc(m.Spec.Endpoints, func(e monitorEndpoint) bool {
					return e.Port == sp.Name && (e.Path == "" || e.Path == "/metrics")
				})
			})
			if !scraped {
				errs = append(errs, fmt.Errorf("Service/%s: no ServiceMonitor scrapes /metrics on port %s", svc.Name, sp.Name))
			}
		}
	}
	return errs
}

// sizedFor is the annotation naming the number of namespaces a Redis's
// maxmemory is sized for.
const sizedFor = "eventbus.io/sized-for-namespaces"

// checkRedis: a Redis run by an overlay keeps an append-only file on a
// persistent volume, never evicts, and has maxmemory sized by the formula
// for the BUS_HISTORY_MAXLEN the services run with, under a memory limit
// with room for an AOF rewrite; REDIS_URL names it.
func checkRedis(r *rendered) []error {
	var errs []error
	for _, w := range r.workloads() {
		if w.name != "redis" {
			continue
		}
		fail := func(format string, a ...any) {
			errs = append(errs, fmt.Errorf("%s: "+format, append([]any{w}, a...)...))
		}
		c := w.pod.Spec.Containers[0]
		args := redisArgs(c.Args)
		for k, v := range map[string]string{"appendonly": "yes", "appendfsync": "everysec", "maxmemory-policy": "noeviction"} {
			if args[k] != v {
				fail("--%s %s, want %s", k, args[k], v)
			}
		}
		maxmemory, err := strconv.ParseInt(args["maxmemory"], 10, 64)
		if err != nil || maxmemory <= 0 {
			fail("--maxmemory %q, want a number of bytes", args["maxmemory"])
			continue
		}
		maxlen, perEvent, err := historyFigures()
		if err != nil {
			fail("%v", err)
			continue
		}
		if v, ok := r.configMaps["eventbus-config"].Data["BUS_HISTORY_MAXLEN"]; ok {
			if maxlen, err = strconv.Atoi(v); err != nil {
				fail("BUS_HISTORY_MAXLEN %q: %v", v, err)
			}
		}
		ns, err := strconv.Atoi(w.annotations[sizedFor])
		if err != nil || ns < 1 {
			fail("annotation %s = %q, want the number of namespaces maxmemory is sized for", sizedFor, w.annotations[sizedFor])
		}
		if want := int64(ns) * int64(maxlen) * int64(perEvent) * redisHeadroom; maxmemory != want {
			fail("--maxmemory %d, want %d namespaces × %d events × %d B × %d = %d", maxmemory, ns, maxlen, perEvent, redisHeadroom, want)
		}
		limit := c.Resources.Limits.Memory()
		if limit.Value() < 2*maxmemory {
			fail("memory limit %s is under twice maxmemory (%d): an AOF rewrite's fork has no room", limit, 2*maxmemory)
		}
		if req := c.Resources.Requests.Memory(); req.Value() < maxmemory {
			fail("memory request %s is under maxmemory (%d)", req, maxmemory)
		}
		if !r.persistent(w, c, "/data") {
			fail("/data is on no persistent volume: a restart loses the record")
		}
		u, err := url.Parse(r.configMaps["eventbus-config"].Data["REDIS_URL"])
		if err != nil {
			fail("REDIS_URL: %v", err)
			continue
		}
		host := "redis"
		if w.kind == "StatefulSet" {
			host = w.name + "-0." + w.serviceName
			i := slices.IndexFunc(r.services, func(s *corev1.Service) bool { return s.Name == w.serviceName })
			if i < 0 || r.services[i].Spec.ClusterIP != corev1.ClusterIPNone {
				fail("serviceName %s is no headless Service", w.serviceName)
			}
		}
		if u.Hostname() != host || u.Port() != "6379" {
			fail("REDIS_URL %s does not name %s:6379", u, host)
		}
	}
	return errs
}

// persistent says whether container c of w mounts a PersistentVolumeClaim
// (or a StatefulSet's claim template) at path.
func (r *rendered) persistent(w workload, c corev1.Container, path string) bool {
	i := slices.IndexFunc(c.VolumeMounts, func(m corev1.VolumeMount) bool { return m.MountPath == path })
	if i < 0 {
		return false
	}
	name := c.VolumeMounts[i].Name
	if slices.ContainsFunc(w.claims, func(p corev1.PersistentVolumeClaim) bool { return p.Name == name }) {
		return true
	}
	return slices.ContainsFunc(w.pod.Spec.Volumes, func(v corev1.Volume) bool {
		return v.Name == name && v.PersistentVolumeClaim != nil
	})
}

// redisArgs reads redis-server's --name value arguments.
func redisArgs(args []string) map[string]string {
	m := map[string]string{}
	for i := 0; i+1 < len(args); i += 2 {
		m[strings.TrimPrefix(args[i], "--")] = args[i+1]
	}
	return m
}

// historyFigures reads what Redis is sized from where it is defined, so
// that the manifests follow it: BUS_HISTORY_MAXLEN's default in
// pkg/envconfig and the bytes an event takes in docs/operations.md.
func historyFigures() (maxlen, perEvent int, err error) {
	maxlen, err1 := findInt(filepath.Join(root, "pkg/envconfig/envconfig.go"), `"BUS_HISTORY_MAXLEN", ([0-9_]+)`)
	perEvent, err2 := findInt(filepath.Join(root, "docs/operations.md"), `At about ([0-9]+) bytes an event`)
	return maxlen, perEvent, errors.Join(err1, err2)
}

func findInt(path, pattern string) (int, error) {
	raw, err := os.ReadFile(path)
	if err != nil {
		return 0, err
	}
	m := regexp.MustCompile(pattern).FindSubmatch(raw)
	if m == nil {
		return 0, fmt.Errorf("%s no longer says %s", path, pattern)
	}
	return strconv.Atoi(strings.ReplaceAll(string(m[1]), "_", ""))
}
