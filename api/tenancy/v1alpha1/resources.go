package v1alpha1

import (
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
)

// ResourceList is a list of resource quantities, as in a ResourceQuota's hard list: at most 64.
// Negative quantities are refused at admission by the ValidatingAdmissionPolicy
// paddock-tenancy-quantities (config/admission): a CRD rule over every quantity exceeds the CEL
// cost budget, whose estimate assumes strings of any length.
// +kubebuilder:validation:MaxProperties=64
type ResourceList map[corev1.ResourceName]resource.Quantity

// Core returns the list as a core ResourceList (the same map).
func (l ResourceList) Core() corev1.ResourceList { return corev1.ResourceList(l) }
