// The floor's MutatingAdmissionPolicies through Kubernetes' own mutating admission code (this
// file joins k8s.io/apiserver/pkg/admission/plugin/policy/mutating at test time:
// scripts/k8s-admission.sh). The apply configurations are merged as the API server merges
// them, by the objects' schemas.
//
// For every case but DELETE: no policy fails, and the object after admission is the one the
// floor's test computed (which equals the webhook's patched object).
package mutating

import (
	"context"
	"encoding/json"
	"reflect"
	"testing"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apiserver/pkg/admission"
	"k8s.io/apiserver/pkg/admission/plugin/policy/generic"
	"k8s.io/apiserver/pkg/admission/plugin/policy/matching"
	"k8s.io/apiserver/pkg/admission/plugin/policy/mutating/patch"
	"k8s.io/apiserver/pkg/authorization/authorizer"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/openapi"

	"prodguard.io/floorcases"
)

func TestProdguardFloorMutating(t *testing.T) {
	schemas := floorcases.Schemas(t)
	for _, set := range floorcases.Load(t) {
		t.Run(set.Name, func(t *testing.T) { mutateSet(t, set, schemas) })
	}
}

func mutateSet(t *testing.T, set floorcases.Set, schemas openapi.Client) {
	objects := floorcases.Policies(t, set, "Mutating")
	policies := floorcases.Start(t, set, objects,
		NewMutatingAdmissionPolicyAccessor, NewMutatingAdmissionPolicyBindingAccessor,
		compilePolicy,
		func(a authorizer.Authorizer, m *matching.Matcher, _ kubernetes.Interface) generic.Dispatcher[PolicyHook] {
			return NewDispatcher(a, m, patch.NewTypeConverterManager(nil, schemas))
		})

	interfaces := admission.NewObjectInterfacesFromScheme(runtime.NewScheme())
	changed := 0
	for _, c := range set.Cases {
		if c.Mutated == nil {
			continue
		}
		attributes := c.Attributes()
		if err := policies.Plugin.Dispatch(context.Background(), attributes, interfaces); err != nil {
			t.Errorf("%s: Kubernetes' mutating admission fails: %v", c.What(), err)
			continue
		}
		after := attributes.GetObject().(*unstructured.Unstructured).Object
		if !reflect.DeepEqual(normal(t, after), normal(t, c.Mutated)) {
			got, _ := json.Marshal(after)
			want, _ := json.Marshal(c.Mutated)
			t.Errorf("%s: after Kubernetes' mutations\n%s\nthe floor's test expects\n%s", c.What(), got, want)
		}
		if !reflect.DeepEqual(normal(t, after), normal(t, c.Object())) {
			changed++
		}
	}
	t.Logf("%s: %d objects, %d requests: %d objects changed",
		set.Name, len(objects), len(set.Cases), changed)
	if len(objects) > 0 && changed == 0 {
		t.Errorf("%s: the policies changed nothing", set.Name)
	}
}

// normal is v as JSON reads it back (numbers as float64), so that two objects compare by value.
func normal(t *testing.T, v interface{}) interface{} {
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	var out interface{}
	if err := json.Unmarshal(b, &out); err != nil {
		t.Fatal(err)
	}
	return out
}
