// Package guides checks the attach guides in envoy/README.md against the gateways' own API
// types, so that a guide cannot name a field the gateway does not have.
//
// Its tests extract every fenced yaml block of envoy/README.md and decode it strictly
// (unknown and duplicate fields are errors):
//
//   - Kubernetes objects of Envoy Gateway (gateway.envoyproxy.io) and the Gateway API
//     (gateway.networking.k8s.io) into the Go types of github.com/envoyproxy/gateway/api/v1alpha1
//     and sigs.k8s.io/gateway-api/apis, case-sensitively as the API server reads them;
//   - Istio objects (networking.istio.io) into the protobuf messages of istio.io/api, with
//     protojson;
//   - Envoy configuration (the patch values of an Istio EnvoyFilter, route fragments, whole
//     bootstraps) into go-control-plane's typed protos with protojson, then checked with their
//     ValidateAll methods (the protoc-gen-validate rules of Envoy's API), including every
//     google.protobuf.Any inside them.
//
// The shipped envoy/*.yaml files are decoded and validated as Envoy bootstraps the same way.
// A block whose type the tests do not know is a failure, not a skip. The module is separate
// from ssetrack's own so that these dependencies stay out of the product.
//
// To see what an older Envoy Gateway lacks, pin it in a copy of this module together with the
// Gateway API version its go.mod requires (go get github.com/envoyproxy/gateway@v1.5.0
// sigs.k8s.io/gateway-api@<that version>) and run go test there: the minimum versions listed
// in envoy/README.md were found that way.
package guides
