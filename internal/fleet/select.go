// Package fleet selects MemberClusters the way every Paddock kind that targets clusters does: by
// name, by label selector, or both (the union), leaving out those being deleted.
package fleet

import (
	"context"
	"fmt"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"sigs.k8s.io/controller-runtime/pkg/client"

	clustersv1 "github.com/paddock-dev/paddock/api/clusters/v1alpha1"
)

// SelectorError is a label selector that does not parse: bad input, not retried.
type SelectorError struct {
	// Field is where the selector is ("spec.targets").
	Field string
	Err   error
}

func (e *SelectorError) Error() string { return fmt.Sprintf("%s.clusterSelector: %s", e.Field, e.Err) }

// Select returns the MemberClusters named or matched by selector, by name. With names only it
// reads each (no walk over the whole fleet). field names the selection in errors.
func Select(ctx context.Context, c client.Reader, names []string, selector *metav1.LabelSelector, field string) (map[string]*clustersv1.MemberCluster, error) {
	var list clustersv1.MemberClusterList
	if selector == nil {
		for _, n := range names {
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
	if selector != nil {
		var err error
		if sel, err = metav1.LabelSelectorAsSelector(selector); err != nil {
			return nil, &SelectorError{Field: field, Err: err}
		}
	}
	named := make(map[string]bool, len(names))
	for _, n := range names {
		named[n] = true
	}
	out := map[string]*clustersv1.MemberCluster{}
	for i := range list.Items {
		mc := &list.Items[i]
		if !mc.DeletionTimestamp.IsZero() {
			continue
		}
		if named[mc.Name] || (sel != nil && sel.Matches(labels.Set(mc.Labels))) {
			out[mc.Name] = mc
		}
	}
	return out, nil
}
