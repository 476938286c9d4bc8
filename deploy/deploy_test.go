// Package deploy tests the deployment files: the Kubernetes manifests
// kustomize renders decode strictly into the Kubernetes API types and hang
// together, and every PromQL expression of the alert rules and the
// dashboard names only metrics the service exports. It is a module of its
// own, so that the Kubernetes and Prometheus libraries it needs stay out of
// the service's dependencies; .ci/run runs it.
package deploy

import (
	"bytes"
	"encoding/json"
	"fmt"
	"maps"
	"os"
	"os/exec"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/prometheus/prometheus/promql/parser"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	policyv1 "k8s.io/api/policy/v1"
	"sigs.k8s.io/yaml"

	"github.com/audit-platform/audit-log-analysis/internal/app"
	"github.com/audit-platform/audit-log-analysis/internal/config"
	"github.com/audit-platform/audit-log-analysis/internal/testenv"
)

// kustomizations are every directory kubectl kustomize must render.
var kustomizations = []string{
	"kustomize/base",
	"kustomize/overlays/rabbitmq-cluster-redis-sentinel",
	"kustomize/overlays/rabbitmq-cluster-redis-cluster",
}

// rendered is one kustomization's output, decoded.
type rendered struct {
	deployments    []appsv1.Deployment
	services       []corev1.Service
	configMaps     []corev1.ConfigMap
	secrets        []corev1.Secret
	pdbs           []policyv1.PodDisruptionBudget
	serviceAccount []corev1.ServiceAccount
}

// render runs kustomize ($KUSTOMIZE, default "kubectl kustomize": the
// Makefile sets it) and decodes every document strictly: an unknown field,
// a wrong type or an unexpected kind fails.
func render(t *testing.T, dir string) rendered {
	t.Helper()
	command := strings.Fields(os.Getenv("KUSTOMIZE"))
	if len(command) == 0 {
		command = []string{"kubectl", "kustomize"}
	}
	if _, err := exec.LookPath(command[0]); err != nil {
		msg := command[0] + " is not installed (make deploy-check finds a kustomize)"
		if testenv.Required() {
			t.Fatal(msg)
		}
		t.Skip(msg)
	}
	out, err := exec.Command(command[0], append(command[1:], dir)...).Output()
	if err != nil {
		var stderr []byte
		if ee, ok := err.(*exec.ExitError); ok {
			stderr = ee.Stderr
		}
		t.Fatalf("%s %s: %v\n%s", strings.Join(command, " "), dir, err, stderr)
	}
	var r rendered
	for i, doc := range bytes.Split(out, []byte("\n---\n")) {
		var head struct{ APIVersion, Kind string }
		if err := yaml.Unmarshal(doc, &head); err != nil {
			t.Fatalf("%s: document %d: %v", dir, i+1, err)
		}
		var err error
		switch head.APIVersion + " " + head.Kind {
		case "apps/v1 Deployment":
			r.deployments = append(r.deployments, decode[appsv1.Deployment](doc, &err))
		case "v1 Service":
			r.services = append(r.services, decode[corev1.Service](doc, &err))
		case "v1 ConfigMap":
			r.configMaps = append(r.configMaps, decode[corev1.ConfigMap](doc, &err))
		case "v1 Secret":
			r.secrets = append(r.secrets, decode[corev1.Secret](doc, &err))
		case "policy/v1 PodDisruptionBudget":
			r.pdbs = append(r.pdbs, decode[policyv1.PodDisruptionBudget](doc, &err))
		case "v1 ServiceAccount":
			r.serviceAccount = append(r.serviceAccount, decode[corev1.ServiceAccount](doc, &err))
		default:
			t.Fatalf("%s: document %d: unexpected %s %s", dir, i+1, head.APIVersion, head.Kind)
		}
		if err != nil {
			t.Fatalf("%s: document %d (%s): %v", dir, i+1, head.Kind, err)
		}
	}
	return r
}

func decode[T any](doc []byte, errp *error) T {
	var v T
	*errp = yaml.UnmarshalStrict(doc, &v)
	return v
}

func TestKustomizeRendersObjectsThatApply(t *testing.T) {
	t.Parallel()
	configNames := configVariables(t)
	for _, dir := range kustomizations {
		t.Run(dir, func(t *testing.T) {
			t.Parallel()
			r := render(t, dir)
			if len(r.deployments) != 1 || len(r.services) != 1 || len(r.pdbs) != 1 || len(r.serviceAccount) != 1 || len(r.configMaps) < 2 || len(r.secrets) != 1 {
				t.Fatalf("rendered %d Deployments, %d Services, %d PodDisruptionBudgets, %d ServiceAccounts, %d ConfigMaps, %d Secrets",
					len(r.deployments), len(r.services), len(r.pdbs), len(r.serviceAccount), len(r.configMaps), len(r.secrets))
			}
			checkDeployment(t, r, configNames)
		})
	}
}

func checkDeployment(t *testing.T, r rendered, configNames []string) {
	t.Helper()
	d := r.deployments[0]
	pod := d.Spec.Template
	spec := pod.Spec
	if len(spec.Containers) != 1 {
		t.Fatalf("%d containers", len(spec.Containers))
	}
	c := spec.Containers[0]

	if tag := c.Image[strings.LastIndex(c.Image, ":")+1:]; !strings.Contains(c.Image, ":") || tag == "latest" || c.ImagePullPolicy == "" {
		t.Errorf("image %q with pull policy %q: want a pinned tag and an explicit policy", c.Image, c.ImagePullPolicy)
	}
	if sa := r.serviceAccount[0]; sa.AutomountServiceAccountToken == nil || *sa.AutomountServiceAccountToken ||
		spec.AutomountServiceAccountToken == nil || *spec.AutomountServiceAccountToken || spec.ServiceAccountName != sa.Name {
		t.Error("the pod must run as its own ServiceAccount with automountServiceAccountToken: false")
	}
	if c.LivenessProbe == nil || c.LivenessProbe.HTTPGet == nil || c.LivenessProbe.HTTPGet.Path != "/livez" ||
		c.ReadinessProbe == nil || c.ReadinessProbe.HTTPGet == nil || c.ReadinessProbe.HTTPGet.Path != "/readyz" {
		t.Error("want a liveness probe on /livez and a readiness probe on /readyz")
	}
	ports := map[string]int32{}
	for _, p := range c.Ports {
		ports[p.Name] = p.ContainerPort
	}
	for _, p := range []*corev1.Probe{c.LivenessProbe, c.ReadinessProbe, c.StartupProbe} {
		if p != nil && p.HTTPGet != nil && ports[p.HTTPGet.Port.String()] == 0 {
			t.Errorf("a probe uses port %q, which the container does not name", p.HTTPGet.Port.String())
		}
	}
	if c.Resources.Requests.Cpu().IsZero() || c.Resources.Requests.Memory().IsZero() || c.Resources.Limits.Memory().IsZero() {
		t.Error("want CPU and memory requests and a memory limit")
	}
	if g := spec.TerminationGracePeriodSeconds; g == nil || *g < 10 {
		t.Error("terminationGracePeriodSeconds must exceed SHUTDOWN_TIMEOUT (8s) and the HTTP servers' second")
	}
	if sc := c.SecurityContext; sc == nil || sc.ReadOnlyRootFilesystem == nil || !*sc.ReadOnlyRootFilesystem ||
		sc.AllowPrivilegeEscalation == nil || *sc.AllowPrivilegeEscalation {
		t.Error("want a read-only root file system and no privilege escalation")
	}

	// The Service selects the pods and targets the metrics port.
	svc := r.services[0]
	if !selects(svc.Spec.Selector, pod.Labels) {
		t.Errorf("Service selector %v does not select the pods (%v)", svc.Spec.Selector, pod.Labels)
	}
	if len(svc.Spec.Ports) != 1 || ports[svc.Spec.Ports[0].TargetPort.String()] != 8001 {
		t.Errorf("Service ports %v: want the metrics port", svc.Spec.Ports)
	}
	if pdb := r.pdbs[0]; pdb.Spec.Selector == nil || !selects(pdb.Spec.Selector.MatchLabels, pod.Labels) ||
		pdb.Spec.MinAvailable == nil || d.Spec.Replicas == nil || int32(pdb.Spec.MinAvailable.IntValue()) >= *d.Spec.Replicas {
		t.Error("the PodDisruptionBudget must select the pods and leave at least one replica to evict")
	}

	// Everything the pod refers to exists, and every variable it gets is
	// one the service reads.
	configMaps := map[string]corev1.ConfigMap{}
	for _, cm := range r.configMaps {
		configMaps[cm.Name] = cm
	}
	var vars []string
	for _, e := range c.EnvFrom {
		switch {
		case e.ConfigMapRef != nil:
			cm, ok := configMaps[e.ConfigMapRef.Name]
			if !ok {
				t.Errorf("envFrom names ConfigMap %s, which is not rendered", e.ConfigMapRef.Name)
			}
			for k := range cm.Data {
				vars = append(vars, k)
			}
		case e.SecretRef != nil:
			if r.secrets[0].Name != e.SecretRef.Name {
				t.Errorf("envFrom names Secret %s, which is not rendered", e.SecretRef.Name)
			}
			for k := range r.secrets[0].Data {
				vars = append(vars, k)
			}
		}
	}
	for _, v := range vars {
		if !slices.Contains(configNames, v) {
			t.Errorf("variable %s is not read by internal/config", v)
		}
	}
	for _, v := range spec.Volumes {
		if v.ConfigMap != nil {
			if _, ok := configMaps[v.ConfigMap.Name]; !ok {
				t.Errorf("volume %s names ConfigMap %s, which is not rendered", v.Name, v.ConfigMap.Name)
			}
		}
	}
	if rulesDir := envValue(configMaps, "RULES_FILE"); rulesDir == "" || !mounted(c, rulesDir) {
		t.Errorf("RULES_FILE %q is not a mounted directory", rulesDir)
	}
}

func selects(selector, labels map[string]string) bool {
	if len(selector) == 0 {
		return false
	}
	for k, v := range selector {
		if labels[k] != v {
			return false
		}
	}
	return true
}

func envValue(cms map[string]corev1.ConfigMap, name string) string {
	for _, cm := range cms {
		if v, ok := cm.Data[name]; ok {
			return v
		}
	}
	return ""
}

func mounted(c corev1.Container, dir string) bool {
	for _, m := range c.VolumeMounts {
		if m.MountPath == dir {
			return true
		}
	}
	return false
}

// configVariables returns the environment variables internal/config
// reads, by recording what Load asks for under settings that take each of
// its branches (one Redis, a Cluster, Sentinels, URLs).
func configVariables(t *testing.T) []string {
	t.Helper()
	seen := map[string]bool{}
	for _, set := range []map[string]string{
		{},
		{"RABBITMQ_URL": "amqps://mq/", "REDIS_URL": "rediss://cache/"},
		{"RABBITMQ_URLS": "amqp://a/,amqp://b/", "REDIS_CLUSTER_ADDRS": "a:6379"},
		{"REDIS_SENTINEL_ADDRS": "s:26379", "REDIS_SENTINEL_MASTER": "m"},
	} {
		_, _ = config.Load(func(k string) string {
			seen[k] = true
			return set[k]
		})
	}
	if len(seen) < 20 {
		t.Fatalf("internal/config read only %d variables", len(seen))
	}
	return slices.Sorted(maps.Keys(seen))
}

// The variables of the compose stack and of .env.example are read by the
// service too.
func TestEveryDocumentedVariableIsRead(t *testing.T) {
	t.Parallel()
	names := configVariables(t)
	var compose struct {
		Services map[string]struct {
			Environment map[string]string `json:"environment"`
		} `json:"services"`
	}
	src, err := os.ReadFile("compose/compose.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if err := yaml.Unmarshal(src, &compose); err != nil {
		t.Fatal(err)
	}
	for k := range compose.Services["audit-log-analysis"].Environment {
		if !slices.Contains(names, k) {
			t.Errorf("compose.yaml sets %s, which the service does not read", k)
		}
	}
	example, err := os.ReadFile("../.env.example")
	if err != nil {
		t.Fatal(err)
	}
	var listed []string
	for _, line := range strings.Split(string(example), "\n") {
		line = strings.TrimPrefix(strings.TrimSpace(line), "# ")
		if k, _, ok := strings.Cut(line, "="); ok && regexp.MustCompile(`^[A-Z][A-Z0-9_]+$`).MatchString(k) {
			listed = append(listed, k)
			if !slices.Contains(names, k) {
				t.Errorf(".env.example lists %s, which the service does not read", k)
			}
		}
	}
	for _, n := range names {
		if !slices.Contains(listed, n) {
			t.Errorf(".env.example does not list %s", n)
		}
	}
}

// templateVars are Grafana's variables, replaced by values PromQL accepts.
var templateVars = strings.NewReplacer("$__rate_interval", "5m", "$job", "audit-log-analysis", "${datasource}", "prometheus")

// promExpr is one PromQL expression, with the labels its legend shows.
type promExpr struct {
	expr         string
	legendLabels []string
}

var legendLabel = regexp.MustCompile(`\{\{\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*\}\}`)

// expressions returns every PromQL expression of the alert rules and the
// dashboard, named by where it is.
func expressions(t *testing.T) map[string]promExpr {
	t.Helper()
	exprs := map[string]promExpr{}
	var rules struct {
		Groups []struct {
			Name  string
			Rules []struct {
				Alert, Record, Expr, For string
				Labels, Annotations      map[string]string
			}
		}
	}
	src, err := os.ReadFile("prometheus/alerts.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if err := yaml.UnmarshalStrict(src, &rules); err != nil {
		t.Fatal(err)
	}
	for _, g := range rules.Groups {
		for _, r := range g.Rules {
			exprs["alerts.yaml "+r.Alert+r.Record] = promExpr{expr: r.Expr}
		}
	}
	var dash struct {
		Panels []struct {
			Title   string
			Targets []struct{ Expr, LegendFormat string }
		}
	}
	src, err = os.ReadFile("grafana/audit-log-analysis.json")
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(src, &dash); err != nil {
		t.Fatal(err)
	}
	for _, p := range dash.Panels {
		for i, tg := range p.Targets {
			var legend []string
			for _, m := range legendLabel.FindAllStringSubmatch(tg.LegendFormat, -1) {
				legend = append(legend, m[1])
			}
			exprs[fmt.Sprintf("dashboard %q target %d", p.Title, i+1)] = promExpr{expr: templateVars.Replace(tg.Expr), legendLabels: legend}
		}
	}
	if len(exprs) < 20 {
		t.Fatalf("only %d expressions found", len(exprs))
	}
	return exprs
}

// targetLabels are added by Prometheus to every series it scrapes, or
// belong to histogram buckets.
var targetLabels = []string{"__name__", "job", "instance", "le", "namespace", "pod"}

// Every expression parses, every audit_analysis_* metric it names is one
// the service registers, and every label it selects, groups or shows by is
// one those metrics have.
func TestPromQLNamesOnlyExportedMetrics(t *testing.T) {
	t.Parallel()
	exported := app.ExportedMetrics()
	p := parser.NewParser(parser.Options{})
	for where, e := range expressions(t) {
		ast, err := p.ParseExpr(e.expr)
		if err != nil {
			t.Errorf("%s: %q does not parse: %v", where, e.expr, err)
			continue
		}
		labels := slices.Clone(targetLabels)
		onlyOurs := true
		var used []string
		parser.Inspect(ast, func(n parser.Node, _ []parser.Node) error {
			switch n := n.(type) {
			case *parser.VectorSelector:
				for _, m := range n.LabelMatchers {
					used = append(used, m.Name)
				}
				if !strings.HasPrefix(n.Name, "audit_analysis_") {
					onlyOurs = false
					return nil
				}
				base := n.Name
				for _, suffix := range []string{"_bucket", "_sum", "_count"} {
					if b, ok := strings.CutSuffix(n.Name, suffix); ok {
						if _, ok := exported[b]; ok {
							base = b
						}
					}
				}
				l, ok := exported[base]
				if !ok {
					t.Errorf("%s: %s is not a metric the service exports", where, n.Name)
				}
				labels = append(labels, l...)
			case *parser.AggregateExpr:
				used = append(used, n.Grouping...)
			}
			return nil
		})
		used = append(used, e.legendLabels...)
		if !onlyOurs {
			continue // other exporters' labels are theirs
		}
		for _, l := range used {
			if !slices.Contains(labels, l) {
				t.Errorf("%s: label %q is not one of the metrics' labels %v", where, l, labels)
			}
		}
	}
}

// The ServiceMonitor selects the Service of the base by its labels and
// port name.
func TestTheServiceMonitorSelectsTheService(t *testing.T) {
	t.Parallel()
	var sm struct {
		APIVersion string `json:"apiVersion"`
		Kind       string `json:"kind"`
		Metadata   struct {
			Name   string            `json:"name"`
			Labels map[string]string `json:"labels"`
		} `json:"metadata"`
		Spec struct {
			Selector struct {
				MatchLabels map[string]string `json:"matchLabels"`
			} `json:"selector"`
			Endpoints []struct {
				Port     string `json:"port"`
				Interval string `json:"interval"`
			} `json:"endpoints"`
		} `json:"spec"`
	}
	src, err := os.ReadFile("prometheus/servicemonitor.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if err := yaml.UnmarshalStrict(src, &sm); err != nil {
		t.Fatal(err)
	}
	r := render(t, "kustomize/base")
	svc := r.services[0]
	if sm.Metadata.Name != svc.Name || !selects(sm.Spec.Selector.MatchLabels, svc.Labels) ||
		len(sm.Spec.Endpoints) != 1 || sm.Spec.Endpoints[0].Port != svc.Spec.Ports[0].Name {
		t.Errorf("the ServiceMonitor %+v does not select Service %s port %s", sm.Spec, svc.Name, svc.Spec.Ports[0].Name)
	}
}
