package guides

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	egv1a1 "github.com/envoyproxy/gateway/api/v1alpha1"
	bootstrapv3 "github.com/envoyproxy/go-control-plane/envoy/config/bootstrap/v3"
	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/types/known/anypb"
	istiov1 "istio.io/api/networking/v1"
	istiov1alpha3 "istio.io/api/networking/v1alpha3"
	istiov1beta1 "istio.io/api/networking/v1beta1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	gwapiv1 "sigs.k8s.io/gateway-api/apis/v1"
	gwapiv1alpha2 "sigs.k8s.io/gateway-api/apis/v1alpha2"
	gwapiv1beta1 "sigs.k8s.io/gateway-api/apis/v1beta1"
	kjson "sigs.k8s.io/json"
	"sigs.k8s.io/yaml"

	// The typed_config and typed_extension_protocol_options messages the guides and the
	// shipped configs use, registered so that protojson can resolve their "@type".
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/ext_proc/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/router/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/upstreams/http/v3"
)

// envoyDir holds the guide (README.md) and the shipped Envoy configs (*.yaml).
const envoyDir = "../../envoy"

// TestReadmeBlocks decodes every yaml block of envoy/README.md into its gateway's types.
func TestReadmeBlocks(t *testing.T) {
	markdown, err := os.ReadFile(filepath.Join(envoyDir, "README.md"))
	if err != nil {
		t.Fatal(err)
	}
	blocks, err := yamlBlocks(string(markdown))
	if err != nil {
		t.Fatalf("envoy/README.md: %v", err)
	}
	var typed []string
	for _, b := range blocks {
		t.Run(fmt.Sprintf("line%d", b.line), func(t *testing.T) {
			what, err := checkDocument([]byte(b.text))
			if err != nil {
				t.Fatalf("envoy/README.md, the yaml block at line %d: %v", b.line, err)
			}
			t.Logf("line %d: %s", b.line, what)
			typed = append(typed, what)
		})
	}
	// The guide's blocks for each gateway: if the extraction stopped finding one (a changed
	// fence, a removed section), this says so instead of passing on fewer blocks.
	for _, want := range []string{
		"gateway.envoyproxy.io/v1alpha1 EnvoyExtensionPolicy",
		"gateway.envoyproxy.io/v1alpha1 BackendTrafficPolicy",
		"gateway.envoyproxy.io/v1alpha1 ClientTrafficPolicy",
		"gateway.networking.k8s.io/v1 HTTPRoute",
		"networking.istio.io/v1alpha3 EnvoyFilter",
		"networking.istio.io/v1 VirtualService",
		"networking.istio.io/v1 DestinationRule",
		"envoy.config.route.v3.Route",
	} {
		if !slices.ContainsFunc(typed, func(s string) bool { return strings.HasPrefix(s, want) }) {
			t.Errorf("envoy/README.md has no yaml block typed as %s", want)
		}
	}
}

// TestShippedConfigs decodes every envoy/*.yaml as an Envoy bootstrap and validates it.
func TestShippedConfigs(t *testing.T) {
	files, err := filepath.Glob(filepath.Join(envoyDir, "*.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	if len(files) == 0 {
		t.Fatalf("no %s/*.yaml", envoyDir)
	}
	for _, f := range files {
		t.Run(filepath.Base(f), func(t *testing.T) {
			y, err := os.ReadFile(f)
			if err != nil {
				t.Fatal(err)
			}
			if err := decodeEnvoyYAML(y, &bootstrapv3.Bootstrap{}); err != nil {
				t.Fatalf("%s: %v", f, err)
			}
		})
	}
}

// TestCheckerRejects shows that the checker fails on what it exists to catch: a field the
// gateway does not have, a field spelt in the wrong case, a duplicate key, a value Envoy's
// validation rules reject, and a block of unknown type.
func TestCheckerRejects(t *testing.T) {
	for name, doc := range map[string]string{
		"Envoy Gateway unknown field": `
apiVersion: gateway.envoyproxy.io/v1alpha1
kind: EnvoyExtensionPolicy
metadata: { name: x }
spec:
  extProc:
  - backendRefs: [{ name: ssetrack, port: 9001 }]
    processingMode: { response: {}, allowModeOverrides: true }
`,
		"Envoy Gateway field in the wrong case": `
apiVersion: gateway.envoyproxy.io/v1alpha1
kind: EnvoyExtensionPolicy
metadata: { name: x }
spec:
  extProc:
  - backendRefs: [{ name: ssetrack, port: 9001 }]
    processingMode: { AllowModeOverride: true }
`,
		"Gateway API duplicate key": `
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: { name: x }
spec:
  rules:
  - timeouts: { request: 0s, request: 1s }
`,
		"unknown metadata field": `
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: { name: x, namespaces: y }
`,
		"unknown kind": `
apiVersion: gateway.envoyproxy.io/v1alpha1
kind: ExtProcPolicy
metadata: { name: x }
`,
		"Istio unknown field": `
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: { name: x }
spec:
  hosts: [a]
  http: [{ timeout: 0s, timeouts: 0s }]
`,
		"EnvoyFilter patch with an unknown Envoy field": `
apiVersion: networking.istio.io/v1alpha3
kind: EnvoyFilter
metadata: { name: x }
spec:
  configPatches:
  - applyTo: HTTP_FILTER
    patch:
      operation: INSERT_BEFORE
      value:
        name: envoy.filters.http.ext_proc
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.http.ext_proc.v3.ExternalProcessor
          grpc_service: { envoy_grpc: { cluster_name: ssetrack } }
          allow_mode_overrides: true
`,
		"EnvoyFilter patch Envoy rejects": `
apiVersion: networking.istio.io/v1alpha3
kind: EnvoyFilter
metadata: { name: x }
spec:
  configPatches:
  - applyTo: CLUSTER
    patch:
      operation: ADD
      value: { name: "", connect_timeout: 1s }
`,
		"Envoy route fragment Envoy rejects": `
routes:
- match: { prefix: "/" }
  route: { cluster: "" }
`,
		"Envoy Any content Envoy rejects": `
routes:
- match: { prefix: "/" }
  route: { cluster: web }
  typed_per_filter_config:
    envoy.filters.http.ext_proc:
      "@type": type.googleapis.com/envoy.extensions.filters.http.ext_proc.v3.ExtProcPerRoute
      disabled: false
`,
		"untyped fragment": `
clusters:
- name: ssetrack
`,
	} {
		t.Run(name, func(t *testing.T) {
			what, err := checkDocument([]byte(doc))
			if err == nil {
				t.Fatalf("accepted as %s:\n%s", what, doc)
			}
			t.Logf("rejected: %v", err)
		})
	}
}

// block is one fenced yaml block of a Markdown file; line is the line of its opening fence.
type block struct {
	line int
	text string
}

// yamlBlocks returns the fenced yaml blocks of markdown. A fence with another info string
// that could hold configuration ("yml", none) or an unclosed fence is an error, so that no
// block escapes the check by its spelling.
func yamlBlocks(markdown string) ([]block, error) {
	var blocks []block
	lines := strings.Split(markdown, "\n")
	for i := 0; i < len(lines); i++ {
		info, ok := strings.CutPrefix(strings.TrimSpace(lines[i]), "```")
		if !ok {
			continue
		}
		switch strings.TrimSpace(info) {
		case "yaml":
		case "sh", "console", "text", "go":
		default:
			return nil, fmt.Errorf("line %d: a fenced block with info string %q; use yaml for configuration", i+1, info)
		}
		start := i
		var body []string
		for i++; i < len(lines) && strings.TrimSpace(lines[i]) != "```"; i++ {
			body = append(body, lines[i])
		}
		if i == len(lines) {
			return nil, fmt.Errorf("line %d: unclosed fenced block", start+1)
		}
		if strings.TrimSpace(info) == "yaml" {
			blocks = append(blocks, block{line: start + 1, text: strings.Join(body, "\n") + "\n"})
		}
	}
	return blocks, nil
}

// checkDocument decodes one yaml document strictly into the type it is written for and
// returns that type's name: a Kubernetes object by its apiVersion and kind, anything else as
// an Envoy configuration fragment by its top-level keys.
func checkDocument(y []byte) (string, error) {
	j, err := yaml.YAMLToJSONStrict(y)
	if err != nil {
		return "", fmt.Errorf("yaml: %w", err)
	}
	var top map[string]json.RawMessage
	if err := json.Unmarshal(j, &top); err != nil {
		return "", fmt.Errorf("not a yaml mapping: %w", err)
	}
	if _, ok := top["apiVersion"]; ok {
		return checkObject(j)
	}
	return checkEnvoyFragment(top)
}

// scheme knows the Kubernetes kinds of Envoy Gateway and the Gateway API.
var scheme = func() *runtime.Scheme {
	s := runtime.NewScheme()
	for _, add := range []func(*runtime.Scheme) error{
		egv1a1.AddToScheme, gwapiv1.Install, gwapiv1beta1.Install, gwapiv1alpha2.Install,
	} {
		if err := add(s); err != nil {
			panic(err)
		}
	}
	return s
}()

// istioKinds maps "apiVersion kind" of the Istio objects the guides may use to their spec
// messages. The v1 and v1beta1 types are aliases of the v1alpha3 messages.
var istioKinds = map[string]func() proto.Message{
	"networking.istio.io/v1alpha3 EnvoyFilter":     func() proto.Message { return &istiov1alpha3.EnvoyFilter{} },
	"networking.istio.io/v1alpha3 VirtualService":  func() proto.Message { return &istiov1alpha3.VirtualService{} },
	"networking.istio.io/v1alpha3 DestinationRule": func() proto.Message { return &istiov1alpha3.DestinationRule{} },
	"networking.istio.io/v1beta1 VirtualService":   func() proto.Message { return &istiov1beta1.VirtualService{} },
	"networking.istio.io/v1beta1 DestinationRule":  func() proto.Message { return &istiov1beta1.DestinationRule{} },
	"networking.istio.io/v1 VirtualService":        func() proto.Message { return &istiov1.VirtualService{} },
	"networking.istio.io/v1 DestinationRule":       func() proto.Message { return &istiov1.DestinationRule{} },
}

// checkObject decodes a Kubernetes object (as JSON) into its kind's type.
func checkObject(j []byte) (string, error) {
	var tm metav1.TypeMeta
	if err := json.Unmarshal(j, &tm); err != nil {
		return "", fmt.Errorf("apiVersion and kind: %w", err)
	}
	what := tm.APIVersion + " " + tm.Kind
	gv, err := schema.ParseGroupVersion(tm.APIVersion)
	if err != nil {
		return what, err
	}
	if newSpec, ok := istioKinds[what]; ok {
		spec := newSpec()
		if err := decodeIstio(j, spec); err != nil {
			return what, err
		}
		if ef, ok := spec.(*istiov1alpha3.EnvoyFilter); ok {
			return what, checkEnvoyFilter(ef)
		}
		return what, nil
	}
	obj, err := scheme.New(gv.WithKind(tm.Kind))
	if err != nil {
		return what, fmt.Errorf("no Go type known for %s: %w", what, err)
	}
	return what, decodeStrict(j, obj)
}

// decodeStrict decodes JSON into a Kubernetes Go type the way the API server reads it:
// field names are case-sensitive, unknown and duplicate fields are errors.
func decodeStrict(j []byte, v any) error {
	strictErrs, err := kjson.UnmarshalStrict(j, v, kjson.DisallowDuplicateFields, kjson.DisallowUnknownFields)
	if err != nil {
		return err
	}
	return errors.Join(strictErrs...)
}

// decodeIstio decodes an Istio object: its metadata into Kubernetes' ObjectMeta, its spec
// into the Istio message with protojson, which rejects unknown fields.
func decodeIstio(j []byte, spec proto.Message) error {
	var obj struct {
		metav1.TypeMeta `json:",inline"`
		Metadata        metav1.ObjectMeta `json:"metadata"`
		Spec            json.RawMessage   `json:"spec"`
	}
	if err := decodeStrict(j, &obj); err != nil {
		return err
	}
	if err := (protojson.UnmarshalOptions{DiscardUnknown: false}).Unmarshal(obj.Spec, spec); err != nil {
		return fmt.Errorf("spec: %w", err)
	}
	return nil
}

// envoyFilterTargets gives, for each EnvoyFilter applyTo, the Envoy message its patch value
// is a (part of).
var envoyFilterTargets = map[istiov1alpha3.EnvoyFilter_ApplyTo]func() proto.Message{
	istiov1alpha3.EnvoyFilter_LISTENER:            func() proto.Message { return &listenerv3.Listener{} },
	istiov1alpha3.EnvoyFilter_FILTER_CHAIN:        func() proto.Message { return &listenerv3.FilterChain{} },
	istiov1alpha3.EnvoyFilter_NETWORK_FILTER:      func() proto.Message { return &listenerv3.Filter{} },
	istiov1alpha3.EnvoyFilter_HTTP_FILTER:         func() proto.Message { return &hcmv3.HttpFilter{} },
	istiov1alpha3.EnvoyFilter_ROUTE_CONFIGURATION: func() proto.Message { return &routev3.RouteConfiguration{} },
	istiov1alpha3.EnvoyFilter_VIRTUAL_HOST:        func() proto.Message { return &routev3.VirtualHost{} },
	istiov1alpha3.EnvoyFilter_HTTP_ROUTE:          func() proto.Message { return &routev3.Route{} },
	istiov1alpha3.EnvoyFilter_CLUSTER:             func() proto.Message { return &clusterv3.Cluster{} },
	istiov1alpha3.EnvoyFilter_EXTENSION_CONFIG:    func() proto.Message { return &corev3.TypedExtensionConfig{} },
	istiov1alpha3.EnvoyFilter_BOOTSTRAP:           func() proto.Message { return &bootstrapv3.Bootstrap{} },
	istiov1alpha3.EnvoyFilter_LISTENER_FILTER:     func() proto.Message { return &listenerv3.ListenerFilter{} },
}

// checkEnvoyFilter decodes each patch value of an EnvoyFilter into the Envoy message its
// applyTo names and validates it. A MERGE value is a part of that message, so it is decoded
// (no unknown fields) but not validated as a whole.
func checkEnvoyFilter(ef *istiov1alpha3.EnvoyFilter) error {
	var errs []error
	for i, cp := range ef.GetConfigPatches() {
		value := cp.GetPatch().GetValue()
		if value == nil {
			continue // REMOVE has no value
		}
		newTarget, ok := envoyFilterTargets[cp.GetApplyTo()]
		if !ok {
			errs = append(errs, fmt.Errorf("configPatches[%d]: no Envoy type known for applyTo %s", i, cp.GetApplyTo()))
			continue
		}
		j, err := protojson.Marshal(value)
		if err != nil {
			errs = append(errs, fmt.Errorf("configPatches[%d]: %w", i, err))
			continue
		}
		target := newTarget()
		if err := protojson.Unmarshal(j, target); err != nil {
			errs = append(errs, fmt.Errorf("configPatches[%d] (%s): %w", i, target.ProtoReflect().Descriptor().FullName(), err))
			continue
		}
		if cp.GetPatch().GetOperation() == istiov1alpha3.EnvoyFilter_Patch_MERGE {
			continue
		}
		if err := validateEnvoy(target); err != nil {
			errs = append(errs, fmt.Errorf("configPatches[%d] (%s): %w", i, target.ProtoReflect().Descriptor().FullName(), err))
		}
	}
	return errors.Join(errs...)
}

// checkEnvoyFragment types a piece of static Envoy configuration by its top-level keys:
// `routes` (a virtual host's route list), `http_filters` (a connection manager's filter
// list) or a whole bootstrap (`static_resources`).
func checkEnvoyFragment(top map[string]json.RawMessage) (string, error) {
	switch {
	case len(top) == 1 && top["routes"] != nil:
		return "envoy.config.route.v3.Route (a virtual host's routes)",
			decodeList(top, "routes", func() proto.Message { return &routev3.Route{} })
	case len(top) == 1 && top["http_filters"] != nil:
		return "envoy.extensions.filters.network.http_connection_manager.v3.HttpFilter (a connection manager's filters)",
			decodeList(top, "http_filters", func() proto.Message { return &hcmv3.HttpFilter{} })
	case top["static_resources"] != nil:
		j, err := json.Marshal(top)
		if err != nil {
			return "", err
		}
		return "envoy.config.bootstrap.v3.Bootstrap", decodeEnvoyJSON(j, &bootstrapv3.Bootstrap{})
	}
	keys := make([]string, 0, len(top))
	for k := range top {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return "", fmt.Errorf("no Envoy type known for a block with the top-level keys %v (give apiVersion and kind, a `routes` or `http_filters` list, or a bootstrap)", keys)
}

// decodeList decodes each element of the list top[key] into a new message and validates
// it; the errors name the elements.
func decodeList(top map[string]json.RawMessage, key string, newMsg func() proto.Message) error {
	var items []json.RawMessage
	if err := json.Unmarshal(top[key], &items); err != nil {
		return fmt.Errorf("%s: %w", key, err)
	}
	var errs []error
	for i, item := range items {
		if err := decodeEnvoyJSON(item, newMsg()); err != nil {
			errs = append(errs, fmt.Errorf("%s[%d]: %w", key, i, err))
		}
	}
	return errors.Join(errs...)
}

// decodeEnvoyYAML decodes Envoy configuration in YAML into m and validates it.
func decodeEnvoyYAML(y []byte, m proto.Message) error {
	j, err := yaml.YAMLToJSONStrict(y)
	if err != nil {
		return fmt.Errorf("yaml: %w", err)
	}
	return decodeEnvoyJSON(j, m)
}

// decodeEnvoyJSON decodes Envoy configuration in JSON into m with protojson (unknown fields
// are errors) and validates it.
func decodeEnvoyJSON(j []byte, m proto.Message) error {
	if err := (protojson.UnmarshalOptions{DiscardUnknown: false}).Unmarshal(j, m); err != nil {
		return fmt.Errorf("%s: %w", m.ProtoReflect().Descriptor().FullName(), err)
	}
	return validateEnvoy(m)
}

// validateEnvoy runs the ValidateAll method go-control-plane generates from Envoy's
// protoc-gen-validate rules on m, and on the message inside every google.protobuf.Any in m:
// the generated rules check an Any's type URL at most, not its content.
func validateEnvoy(m proto.Message) error {
	name := m.ProtoReflect().Descriptor().FullName()
	v, ok := m.(interface{ ValidateAll() error })
	if !ok {
		return fmt.Errorf("%s has no ValidateAll", name)
	}
	errs := []error{v.ValidateAll()}
	errs = append(errs, validateAnys(m.ProtoReflect())...)
	return errors.Join(errs...)
}

// validateAnys validates the content of every google.protobuf.Any reachable from m.
func validateAnys(m protoreflect.Message) []error {
	var errs []error
	visit := func(m protoreflect.Message) {
		if a, ok := m.Interface().(*anypb.Any); ok {
			inner, err := a.UnmarshalNew()
			if err == nil {
				err = validateEnvoy(inner)
			}
			if err != nil {
				errs = append(errs, fmt.Errorf("%s: %w", a.GetTypeUrl(), err))
			}
			return
		}
		errs = append(errs, validateAnys(m)...)
	}
	m.Range(func(fd protoreflect.FieldDescriptor, v protoreflect.Value) bool {
		switch {
		case fd.IsMap():
			if fd.MapValue().Message() != nil {
				v.Map().Range(func(_ protoreflect.MapKey, mv protoreflect.Value) bool {
					visit(mv.Message())
					return true
				})
			}
		case fd.IsList():
			if fd.Message() != nil {
				for i := range v.List().Len() {
					visit(v.List().Get(i).Message())
				}
			}
		case fd.Message() != nil:
			visit(v.Message())
		}
		return true
	})
	return errs
}
