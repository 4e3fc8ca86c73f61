package clustercache

import (
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
)

// memberRef is the object carried by Subscribe's events: only its name (the member's) matters.
type memberRef struct {
	metav1.TypeMeta
	metav1.ObjectMeta
}

func (m *memberRef) DeepCopyObject() runtime.Object {
	out := *m
	m.ObjectMeta.DeepCopyInto(&out.ObjectMeta)
	return &out
}
