package tenancy

import (
	"context"
	"sort"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"sigs.k8s.io/controller-runtime/pkg/client"

	clustersv1 "github.com/paddock-dev/paddock/api/clusters/v1alpha1"
	tenancyv1 "github.com/paddock-dev/paddock/api/tenancy/v1alpha1"
	"github.com/paddock-dev/paddock/internal/fleet"
)

// selectClusters lists the names of the MemberClusters t selects (not being deleted), sorted.
// A selector that does not parse is a *fleet.SelectorError.
func selectClusters(ctx context.Context, c client.Reader, t tenancyv1.ClusterTargets, field string) ([]string, error) {
	selected, err := fleet.Select(ctx, c, t.ClusterNames, t.ClusterSelector, field)
	if err != nil {
		return nil, err
	}
	out := make([]string, 0, len(selected))
	for n := range selected {
		out = append(out, n)
	}
	sort.Strings(out)
	return out, nil
}

// outside lists the names of some that are not in all.
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

// fleetSnapshot is a client.Reader that serves MemberClusters from one list read on first use
// (everything else from the client): a reconcile that selects clusters for many objects reads
// the fleet once, not once per object.
type fleetSnapshot struct {
	client.Reader
	list   *clustersv1.MemberClusterList
	byName map[string]*clustersv1.MemberCluster
}

func (f *fleetSnapshot) load(ctx context.Context) error {
	if f.list != nil {
		return nil
	}
	list := &clustersv1.MemberClusterList{}
	if err := f.Reader.List(ctx, list); err != nil {
		return err
	}
	f.list, f.byName = list, make(map[string]*clustersv1.MemberCluster, len(list.Items))
	for i := range list.Items {
		f.byName[list.Items[i].Name] = &list.Items[i]
	}
	return nil
}

func (f *fleetSnapshot) Get(ctx context.Context, key client.ObjectKey, obj client.Object, opts ...client.GetOption) error {
	mc, ok := obj.(*clustersv1.MemberCluster)
	if !ok {
		return f.Reader.Get(ctx, key, obj, opts...)
	}
	if err := f.load(ctx); err != nil {
		return err
	}
	got, ok := f.byName[key.Name]
	if !ok {
		return apierrors.NewNotFound(clustersv1.GroupVersion.WithResource("memberclusters").GroupResource(), key.Name)
	}
	got.DeepCopyInto(mc)
	return nil
}

func (f *fleetSnapshot) List(ctx context.Context, list client.ObjectList, opts ...client.ListOption) error {
	l, ok := list.(*clustersv1.MemberClusterList)
	if !ok || len(opts) > 0 {
		return f.Reader.List(ctx, list, opts...)
	}
	if err := f.load(ctx); err != nil {
		return err
	}
	f.list.DeepCopyInto(l)
	return nil
}
