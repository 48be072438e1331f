// The floor's ValidatingAdmissionPolicies through Kubernetes' own validating admission code
// (this file joins k8s.io/apiserver/pkg/admission/plugin/policy/validating at test time, to
// compile them as the API server does: scripts/k8s-admission.sh).
//
// For every case: the policies deny exactly when the floor's test says one of its refusals is
// enforced, with that refusal's message, and warn with exactly its other refusals' messages.
// Every policy's failurePolicy is set to Fail here, so that an expression that fails to
// evaluate denies, and so cannot pass unseen.
//
// And every policy type-checks against the schemas of the kinds it matches, as the API server
// checks it (its TypeChecker, whose warnings it writes to the policy's status).
package validating

import (
	"context"
	"slices"
	"sort"
	"strings"
	"testing"

	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apiserver/pkg/admission"
	"k8s.io/apiserver/pkg/admission/plugin/policy/generic"
	"k8s.io/apiserver/pkg/admission/plugin/policy/matching"
	"k8s.io/apiserver/pkg/authorization/authorizer"
	"k8s.io/apiserver/pkg/cel/openapi/resolver"
	"k8s.io/apiserver/pkg/warning"
	"k8s.io/client-go/kubernetes"

	"prodguard.io/floorcases"
)

const deniedPrefix = "denied request: "
const warnedPrefix = "Validation failed for ValidatingAdmissionPolicy '"

func TestProdguardFloorValidating(t *testing.T) {
	for _, set := range floorcases.Load(t) {
		t.Run(set.Name, func(t *testing.T) { validateSet(t, set) })
	}
}

func validateSet(t *testing.T, set floorcases.Set) {
	objects := floorcases.Policies(t, set, "Validating")
	policies := floorcases.Start(t, set, objects,
		NewValidatingAdmissionPolicyAccessor, NewValidatingAdmissionPolicyBindingAccessor,
		compilePolicy,
		func(a authorizer.Authorizer, m *matching.Matcher, _ kubernetes.Interface) generic.Dispatcher[PolicyHook] {
			return NewDispatcher(a, generic.NewPolicyMatcher(m))
		})

	interfaces := admission.NewObjectInterfacesFromScheme(runtime.NewScheme())
	denied, warned := 0, 0
	for _, c := range set.Cases {
		warnings := &floorcases.Warnings{}
		ctx := warning.WithWarningRecorder(context.Background(), warnings)
		err := policies.Plugin.Dispatch(ctx, c.Attributes(), interfaces)
		deny, warn := c.Expected()
		switch {
		case err != nil:
			denied++
			message := err.Error()
			at := strings.Index(message, deniedPrefix)
			if at < 0 || !slices.Contains(deny, message[at+len(deniedPrefix):]) {
				t.Errorf("%s: Kubernetes denies: %s\nthe floor's test expects: %q", c.What(), message, deny)
			}
		case len(deny) > 0:
			t.Errorf("%s: Kubernetes admits; the floor's test expects a denial: %q", c.What(), deny)
		}
		var got []string
		for _, w := range warnings.List {
			at := strings.Index(w, "': ")
			if !strings.HasPrefix(w, warnedPrefix) || at < 0 {
				t.Errorf("%s: a warning not from a policy: %s", c.What(), w)
				continue
			}
			got = append(got, w[at+3:])
		}
		warned += len(got)
		if !slices.Equal(sorted(got), warn) {
			t.Errorf("%s: Kubernetes warns %q; the floor's test expects %q", c.What(), got, warn)
		}
	}
	t.Logf("%s: %d objects, %d requests: %d denied, %d warnings",
		set.Name, len(objects), len(set.Cases), denied, warned)
	if len(objects) > 0 && denied+warned == 0 {
		t.Errorf("%s: the policies refused nothing", set.Name)
	}
}

func sorted(list []string) []string {
	out := append([]string(nil), list...)
	sort.Strings(out)
	return out
}

// The kinds the floor matches whose schemas floorcases.Schemas holds.
var typedKinds = []struct {
	group, version, plural, kind string
}{
	{"", "v1", "pods", "Pod"},
	{"", "v1", "replicationcontrollers", "ReplicationController"},
	{"", "v1", "podtemplates", "PodTemplate"},
	{"apps", "v1", "deployments", "Deployment"},
	{"apps", "v1", "statefulsets", "StatefulSet"},
	{"apps", "v1", "daemonsets", "DaemonSet"},
	{"apps", "v1", "replicasets", "ReplicaSet"},
	{"batch", "v1", "jobs", "Job"},
	{"batch", "v1", "cronjobs", "CronJob"},
	{"networking.k8s.io", "v1", "ingresses", "Ingress"},
}

func TestProdguardFloorTypeChecks(t *testing.T) {
	mapper := meta.NewDefaultRESTMapper(nil)
	for _, k := range typedKinds {
		gv := schema.GroupVersion{Group: k.group, Version: k.version}
		mapper.AddSpecific(gv.WithKind(k.kind), gv.WithResource(k.plural),
			gv.WithResource(strings.ToLower(k.kind)), meta.RESTScopeNamespace)
	}
	checker := &TypeChecker{
		SchemaResolver: &resolver.ClientDiscoveryResolver{Discovery: floorcases.Discovery(floorcases.Schemas(t))},
		RestMapper:     mapper,
	}
	checked := map[string]bool{}
	for _, set := range floorcases.Load(t) {
		for _, object := range floorcases.Policies(t, set, "Validating") {
			policy, ok := object.(*admissionregistrationv1.ValidatingAdmissionPolicy)
			if !ok {
				continue
			}
			for _, gvk := range checker.CreateContext(policy).gvks {
				checked[policy.Name+" on "+gvk.Kind] = true
			}
			for _, warning := range checker.Check(policy) {
				t.Errorf("%s: %s: %s: %s", set.Name, policy.Name, warning.FieldRef, warning.Warning)
			}
		}
	}
	var pairs []string
	for pair := range checked {
		pairs = append(pairs, pair)
	}
	sort.Strings(pairs)
	t.Logf("type-checked %d policies on their kinds: %s", len(pairs), strings.Join(pairs, ", "))
	if len(pairs) == 0 {
		t.Error("no policy was type-checked")
	}
}
