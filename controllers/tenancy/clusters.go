package tenancy

import (
	"context"
	"fmt"
	"sort"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"sigs.k8s.io/controller-runtime/pkg/client"

	clustersv1 "github.com/paddock-dev/paddock/api/clusters/v1alpha1"
	tenancyv1 "github.com/paddock-dev/paddock/api/tenancy/v1alpha1"
)

// selectorError is a label selector that does not parse: bad input, not retried.
type selectorError struct{ msg string }

func (e *selectorError) Error() string { return e.msg }

// selectClusters lists the MemberClusters t selects (not being deleted), by name, sorted.
func selectClusters(ctx context.Context, c client.Reader, t tenancyv1.ClusterTargets, field string) ([]string, error) {
	var list clustersv1.MemberClusterList
	if t.ClusterSelector == nil {
		// Names only: a Get each, not a walk over the whole fleet.
		for _, n := range t.ClusterNames {
			mc := &clustersv1.MemberCluster{}
			if err := c.Get(ctx, client.ObjectKey{Name: n}, mc); err != nil {
				if apierrors.IsNotFound(err) {
					continue
				}
				return nil, err
			}
			list.Items = append(list.Items, *mc)
		}
	} else if err := c.List(ctx, &list); err != nil {
		return nil, err
	}
	var sel labels.Selector
	if t.ClusterSelector != nil {
		var err error
		if sel, err = metav1.LabelSelectorAsSelector(t.ClusterSelector); err != nil {
			return nil, &selectorError{msg: fmt.Sprintf("%s.clusterSelector: %s", field, err)}
		}
	}
	names := map[string]bool{}
	for _, n := range t.ClusterNames {
		names[n] = true
	}
	var out []string
	for i := range list.Items {
		mc := &list.Items[i]
		if !mc.DeletionTimestamp.IsZero() {
			continue
		}
		if names[mc.Name] || (sel != nil && sel.Matches(labels.Set(mc.Labels))) {
			out = append(out, mc.Name)
		}
	}
	sort.Strings(out)
	return out, nil
}

// outside lists the names of some that are not in all (both sorted).
func outside(some, all []string) []string {
	in := map[string]bool{}
	for _, n := range all {
		in[n] = true
	}
	var out []string
	for _, n := range some {
		if !in[n] {
			out = append(out, n)
		}
	}
	return out
}
