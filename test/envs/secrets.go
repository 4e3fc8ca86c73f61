package envs

import (
	"context"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/cluster-api/util/secret"
	"sigs.k8s.io/controller-runtime/pkg/client"
)

// KubeconfigSecretName is the name Cluster API gives a cluster's kubeconfig Secret.
func KubeconfigSecretName(cluster string) string { return secret.Name(cluster, secret.Kubeconfig) }

// KubeconfigSecretKey is the data key Cluster API stores a kubeconfig under.
const KubeconfigSecretKey = secret.KubeconfigDataName

// WriteKubeconfigSecret creates or updates the Secret <cluster>-kubeconfig in namespace with the
// kubeconfig under key "value", the way Cluster API writes it.
func WriteKubeconfigSecret(ctx context.Context, c client.Client, namespace, cluster string, kubeconfig []byte) (*corev1.Secret, error) {
	s := &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: namespace, Name: KubeconfigSecretName(cluster)}}
	if err := c.Get(ctx, client.ObjectKeyFromObject(s), s); err != nil {
		if !apierrors.IsNotFound(err) {
			return nil, err
		}
		s.Data = map[string][]byte{KubeconfigSecretKey: kubeconfig}
		return s, c.Create(ctx, s)
	}
	s.Data = map[string][]byte{KubeconfigSecretKey: kubeconfig}
	return s, c.Update(ctx, s)
}

// EnsureNamespace creates a namespace if it does not exist.
func EnsureNamespace(ctx context.Context, c client.Client, name string) error {
	err := c.Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name}})
	return client.IgnoreAlreadyExists(err)
}

// WriteMemberKubeconfigSecrets creates namespace in the management control plane and writes every
// member's kubeconfig Secret there (<member>-kubeconfig, key "value").
func (e *Env) WriteMemberKubeconfigSecrets(ctx context.Context, namespace string) error {
	c := e.Management.Client
	if err := EnsureNamespace(ctx, c, namespace); err != nil {
		return err
	}
	for _, m := range e.Members {
		if _, err := WriteKubeconfigSecret(ctx, c, namespace, m.Name, m.Kubeconfig()); err != nil {
			return err
		}
	}
	return nil
}
