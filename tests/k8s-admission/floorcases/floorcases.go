// Package floorcases reads the cases that tests/cel_floor.rs writes (PRODGUARD_FLOOR_CASES):
// for each policy set, the floor's objects (objects.json) and every request it judged, with
// the verdict and the mutated object the floor gives (cases.jsonl). The tests beside it send
// them through Kubernetes' own ValidatingAdmissionPolicy and MutatingAdmissionPolicy code.
package floorcases

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apiserver/pkg/admission"
	"k8s.io/apiserver/pkg/admission/plugin/policy/generic"
	"k8s.io/apiserver/pkg/admission/plugin/policy/matching"
	"k8s.io/apiserver/pkg/authentication/user"
	"k8s.io/apiserver/pkg/authorization/authorizer"
	"k8s.io/client-go/discovery"
	fakediscovery "k8s.io/client-go/discovery/fake"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/openapi"
	"k8s.io/client-go/openapi/openapitest"
	clienttesting "k8s.io/client-go/testing"
)

// Refusal is one refusal of the floor: the policy, its message and the binding's actions.
type Refusal struct {
	Policy  string
	Message string
	Actions []string
}

func (r *Refusal) UnmarshalJSON(b []byte) error {
	var raw []json.RawMessage
	if err := json.Unmarshal(b, &raw); err != nil || len(raw) != 3 {
		return fmt.Errorf("a refusal is [policy, message, actions]: %s", b)
	}
	if err := json.Unmarshal(raw[0], &r.Policy); err != nil {
		return err
	}
	if err := json.Unmarshal(raw[1], &r.Message); err != nil {
		return err
	}
	return json.Unmarshal(raw[2], &r.Actions)
}

// Case is one request and what the floor (as the differential test evaluates it) does with it.
type Case struct {
	Origin   string                 `json:"origin"`
	Request  map[string]interface{} `json:"request"`
	Refusals []Refusal              `json:"refusals"`
	// The object after the floor's mutations; null for a DELETE.
	Mutated map[string]interface{} `json:"mutated"`
}

// Set is one policy set's objects and cases.
type Set struct {
	Name    string
	Objects []json.RawMessage
	Cases   []Case
}

// Load reads every policy set under $PRODGUARD_FLOOR_CASES, and fails the test when there is
// none: nothing is skipped.
func Load(t *testing.T) []Set {
	root := os.Getenv("PRODGUARD_FLOOR_CASES")
	if root == "" {
		t.Fatal("PRODGUARD_FLOOR_CASES is not set (scripts/k8s-admission.sh sets it)")
	}
	dirs, err := os.ReadDir(root)
	if err != nil {
		t.Fatal(err)
	}
	var sets []Set
	for _, d := range dirs {
		set := Set{Name: d.Name()}
		raw, err := os.ReadFile(filepath.Join(root, d.Name(), "objects.json"))
		if err != nil {
			t.Fatal(err)
		}
		if err := json.Unmarshal(raw, &set.Objects); err != nil {
			t.Fatalf("%s: %v", d.Name(), err)
		}
		lines, err := os.ReadFile(filepath.Join(root, d.Name(), "cases.jsonl"))
		if err != nil {
			t.Fatal(err)
		}
		for _, line := range strings.Split(string(lines), "\n") {
			if line == "" {
				continue
			}
			var c Case
			if err := json.Unmarshal([]byte(line), &c); err != nil {
				t.Fatalf("%s: %v", d.Name(), err)
			}
			set.Cases = append(set.Cases, c)
		}
		if len(set.Cases) == 0 {
			t.Fatalf("%s: no cases", d.Name())
		}
		sets = append(sets, set)
	}
	if len(sets) == 0 {
		t.Fatalf("no policy set under %s", root)
	}
	return sets
}

// kindOf is the `kind` of an object of objects.json.
func kindOf(object json.RawMessage) string {
	var head metav1.TypeMeta
	if err := json.Unmarshal(object, &head); err != nil {
		return ""
	}
	return head.Kind
}

// decode reads an object of objects.json into `into`, without its apiVersion and kind (the
// test context infers them from the type).
func decode(t *testing.T, object json.RawMessage, into runtime.Object) {
	if err := json.Unmarshal(object, into); err != nil {
		t.Fatal(err)
	}
	into.GetObjectKind().SetGroupVersionKind(schema.GroupVersionKind{})
}

// defaultMatch sets what pkg/apis/admissionregistration/v1/defaults.go sets in the API server
// (an object read from JSON here does not get it).
func defaultMatch(m *admissionregistrationv1.MatchResources) {
	if m == nil {
		return
	}
	if m.NamespaceSelector == nil {
		m.NamespaceSelector = &metav1.LabelSelector{}
	}
	if m.ObjectSelector == nil {
		m.ObjectSelector = &metav1.LabelSelector{}
	}
	if m.MatchPolicy == nil {
		equivalent := admissionregistrationv1.Equivalent
		m.MatchPolicy = &equivalent
	}
	for _, rules := range [][]admissionregistrationv1.NamedRuleWithOperations{m.ResourceRules, m.ExcludeResourceRules} {
		for i := range rules {
			if rules[i].Scope == nil {
				all := admissionregistrationv1.AllScopes
				rules[i].Scope = &all
			}
		}
	}
}

// Policies are the set's policies and bindings of one kind of admission policy ("Validating"
// or "Mutating"), as the API server stores them (its defaults set), every policy with
// failurePolicy Fail so that an expression that fails to evaluate cannot pass unseen.
func Policies(t *testing.T, set Set, which string) []runtime.Object {
	fail := admissionregistrationv1.Fail
	var out []runtime.Object
	for _, raw := range set.Objects {
		switch kindOf(raw) {
		case which + "AdmissionPolicy":
			if which == "Validating" {
				policy := &admissionregistrationv1.ValidatingAdmissionPolicy{}
				decode(t, raw, policy)
				defaultMatch(policy.Spec.MatchConstraints)
				policy.Spec.FailurePolicy = &fail
				out = append(out, policy)
			} else {
				policy := &admissionregistrationv1.MutatingAdmissionPolicy{}
				decode(t, raw, policy)
				defaultMatch(policy.Spec.MatchConstraints)
				policy.Spec.FailurePolicy = &fail
				out = append(out, policy)
			}
		case which + "AdmissionPolicyBinding":
			if which == "Validating" {
				binding := &admissionregistrationv1.ValidatingAdmissionPolicyBinding{}
				decode(t, raw, binding)
				defaultMatch(binding.Spec.MatchResources)
				out = append(out, binding)
			} else {
				binding := &admissionregistrationv1.MutatingAdmissionPolicyBinding{}
				decode(t, raw, binding)
				defaultMatch(binding.Spec.MatchResources)
				out = append(out, binding)
			}
		}
	}
	return out
}

// Start runs a policy plugin (its accessors, compiler and dispatcher) on a test context that
// holds the set's namespaces and `objects`, until the test ends.
func Start[P, B runtime.Object, E generic.Evaluator](
	t *testing.T,
	set Set,
	objects []runtime.Object,
	policyAccessor func(P) generic.PolicyAccessor,
	bindingAccessor func(B) generic.BindingAccessor,
	compile func(P) E,
	dispatcher func(authorizer.Authorizer, *matching.Matcher, kubernetes.Interface) generic.Dispatcher[generic.PolicyHook[P, B, E]],
) *generic.PolicyTestContext[P, B, E] {
	policies, cancel, err := generic.NewPolicyTestContext(t, policyAccessor, bindingAccessor,
		compile, dispatcher, nil, []meta.RESTMapping{namespaceMapping})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(cancel)
	if err := policies.Start(); err != nil {
		t.Fatal(err)
	}
	for _, ns := range namespaces(set.Cases) {
		if err := policies.Update(ns); err != nil {
			t.Fatal(err)
		}
	}
	if err := policies.UpdateAndWait(objects...); err != nil {
		t.Fatal(err)
	}
	// The namespace informer has no wait of its own.
	time.Sleep(time.Second)
	return policies
}

// namespaceMapping lets the test context store Namespaces.
var namespaceMapping = meta.RESTMapping{
	Resource:         schema.GroupVersionResource{Version: "v1", Resource: "namespaces"},
	GroupVersionKind: schema.GroupVersionKind{Version: "v1", Kind: "Namespace"},
	Scope:            meta.RESTScopeRoot,
}

// namespaces are the namespaces the cases are in, labelled as the API server labels them.
func namespaces(cases []Case) []runtime.Object {
	seen := map[string]bool{}
	var out []runtime.Object
	for _, c := range cases {
		ns := str(c.Request, "namespace")
		if ns == "" || seen[ns] {
			continue
		}
		seen[ns] = true
		out = append(out, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{
			Name:   ns,
			Labels: map[string]string{"kubernetes.io/metadata.name": ns},
		}})
	}
	return out
}

func str(m map[string]interface{}, path ...string) string {
	var at interface{} = m
	for _, p := range path {
		mm, ok := at.(map[string]interface{})
		if !ok {
			return ""
		}
		at = mm[p]
	}
	s, _ := at.(string)
	return s
}

func object(v interface{}) runtime.Object {
	m, ok := v.(map[string]interface{})
	if !ok || m == nil {
		return nil
	}
	return &unstructured.Unstructured{Object: m}
}

// Attributes are the case's request as the API server hands it to admission.
func (c *Case) Attributes() admission.Attributes {
	r := c.Request
	var groups []string
	if info, ok := r["userInfo"].(map[string]interface{}); ok {
		if gs, ok := info["groups"].([]interface{}); ok {
			for _, g := range gs {
				if s, ok := g.(string); ok {
					groups = append(groups, s)
				}
			}
		}
	}
	kind := schema.GroupVersionKind{Group: str(r, "kind", "group"), Version: str(r, "kind", "version"), Kind: str(r, "kind", "kind")}
	resource := schema.GroupVersionResource{Group: str(r, "resource", "group"), Version: str(r, "resource", "version"), Resource: str(r, "resource", "resource")}
	return admission.NewAttributesRecord(object(r["object"]), object(r["oldObject"]), kind,
		str(r, "namespace"), str(r, "name"), resource, str(r, "subResource"),
		admission.Operation(str(r, "operation")), nil, false,
		&user.DefaultInfo{Name: str(r, "userInfo", "username"), Groups: groups})
}

// Object is the case's object, to compare with Mutated after admission.
func (c *Case) Object() map[string]interface{} {
	m, _ := c.Request["object"].(map[string]interface{})
	return m
}

// What names the case in a failure.
func (c *Case) What() string {
	r := c.Request
	sub := str(r, "subResource")
	if sub != "" {
		sub = "/" + sub
	}
	return fmt.Sprintf("%s: %s %s %s%s by %s", c.Origin, str(r, "operation"), str(r, "kind", "kind"),
		str(r, "resource", "resource"), sub, str(r, "userInfo", "username"))
}

// Expected are the messages the floor denies with and warns with.
func (c *Case) Expected() (deny, warn []string) {
	for _, r := range c.Refusals {
		enforced := false
		for _, a := range r.Actions {
			if a == "Deny" {
				enforced = true
			}
		}
		if enforced {
			deny = append(deny, r.Message)
		} else {
			warn = append(warn, r.Message)
		}
	}
	sort.Strings(warn)
	return deny, warn
}

// Warnings records the warnings admission adds (warning.WithWarningRecorder).
type Warnings struct {
	sync.Mutex
	List []string
}

func (w *Warnings) AddWarning(agent, text string) {
	w.Lock()
	defer w.Unlock()
	w.List = append(w.List, text)
}

// Schemas are client-go's embedded test schemas (core, apps and batch v1, as the API server
// serves them at /openapi/v3) with networking.k8s.io/v1 added, which they lack: Ingress with
// ObjectMeta as its metadata (what the ingress-body-size MAP writes) and its spec and status
// kept as they are.
func Schemas(t *testing.T) openapi.Client {
	paths, err := openapitest.NewEmbeddedFileClient().Paths()
	if err != nil {
		t.Fatal(err)
	}
	apps, ok := paths["apis/apps/v1"]
	if !ok {
		t.Fatal("client-go's embedded schemas have no apps/v1")
	}
	raw, err := apps.Schema("application/json")
	if err != nil {
		t.Fatal(err)
	}
	var doc map[string]interface{}
	if err := json.Unmarshal(raw, &doc); err != nil {
		t.Fatal(err)
	}
	components, _ := doc["components"].(map[string]interface{})
	all, _ := components["schemas"].(map[string]interface{})
	schemas := map[string]interface{}{}
	for name, schema := range all {
		if strings.HasPrefix(name, "io.k8s.apimachinery.") {
			schemas[name] = schema
		}
	}
	kept := map[string]interface{}{"type": "object", "x-kubernetes-preserve-unknown-fields": true}
	schemas["io.k8s.api.networking.v1.Ingress"] = map[string]interface{}{
		"type": "object",
		"properties": map[string]interface{}{
			"apiVersion": map[string]interface{}{"type": "string"},
			"kind":       map[string]interface{}{"type": "string"},
			"metadata": map[string]interface{}{
				"$ref":    "#/components/schemas/io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta",
				"default": map[string]interface{}{},
			},
			"spec":   kept,
			"status": kept,
		},
		"x-kubernetes-group-version-kind": []interface{}{
			map[string]interface{}{"group": "networking.k8s.io", "kind": "Ingress", "version": "v1"},
		},
	}
	ingress, err := json.Marshal(map[string]interface{}{
		"openapi":    doc["openapi"],
		"info":       doc["info"],
		"paths":      map[string]interface{}{},
		"components": map[string]interface{}{"schemas": schemas},
	})
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]openapi.GroupVersion{}
	for k, v := range paths {
		out[k] = v
	}
	out["apis/networking.k8s.io/v1"] = fixedSchema(ingress)
	return fixedPaths(out)
}

type fixedPaths map[string]openapi.GroupVersion

func (p fixedPaths) Paths() (map[string]openapi.GroupVersion, error) { return p, nil }

type fixedSchema []byte

func (s fixedSchema) Schema(string) ([]byte, error) { return s, nil }
func (s fixedSchema) ServerRelativeURL() string {
	return fmt.Sprintf("/openapi/v3/apis/networking.k8s.io/v1?hash=%d", len(s))
}

// Discovery serves `schemas` as the API server's OpenAPI v3 (for the type checker's schema
// resolver); nothing else of it is used.
func Discovery(schemas openapi.Client) discovery.DiscoveryInterface {
	return openAPIDiscovery{FakeDiscovery: &fakediscovery.FakeDiscovery{Fake: &clienttesting.Fake{}}, schemas: schemas}
}

type openAPIDiscovery struct {
	*fakediscovery.FakeDiscovery
	schemas openapi.Client
}

func (d openAPIDiscovery) OpenAPIV3() openapi.Client { return d.schemas }
