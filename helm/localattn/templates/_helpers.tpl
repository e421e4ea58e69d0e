{{/*
Names and labels. Names are truncated to 63 characters (the DNS label limit of Kubernetes names).
*/}}
{{- define "localattn.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "localattn.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "localattn.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Selector labels: stable across upgrades (a Deployment's selector is immutable).
*/}}
{{- define "localattn.selectorLabels" -}}
app.kubernetes.io/name: {{ include "localattn.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end }}

{{- define "localattn.labels" -}}
helm.sh/chart: {{ include "localattn.chart" . }}
{{ include "localattn.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/part-of: localattn
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "localattn.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "localattn.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "localattn.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{/*
RBAC rules for the namespaced resources the operator touches, shared by the ClusterRole (cluster-wide) and
the per-namespace Roles (watchNamespaces). Exactly the verbs operator/localattn_operator/k8s.py and kopf use,
and nothing more: tests/helm/test_rbac.py derives that list from the code (it drives the real reconciler and
reads kopf's handler registry) and fails on a missing or an extra verb; tests/helm/test_e2e_rbac.py checks
it on a real apiserver.
*/}}
{{- define "localattn.namespacedRules" -}}
# The custom resources: read them, watch them (kopf), patch annotations (kopf's progress and diff-base storage).
- apiGroups: ["localattn.dev"]
  resources: ["localattndeployments"]
  verbs: ["get", "list", "watch", "patch"]
- apiGroups: ["localattn.dev"]
  resources: ["localattndeployments/status"]
  verbs: ["patch"]
# spec.autoscaling: the operator owns spec.replicas and writes each decision through the scale subresource.
- apiGroups: ["localattn.dev"]
  resources: ["localattndeployments/scale"]
  verbs: ["patch"]
# Children, written with server-side apply: PATCH, which the apiserver also authorises as create when the
# object does not exist yet. Watched (kopf) to reconcile when they change or vanish. Deleted: an arm the rollout
# no longer runs, a migrated LAD's single Deployment, superseded per-revision runtime ConfigMaps.
- apiGroups: ["apps"]
  resources: ["deployments"]
  verbs: ["get", "list", "watch", "create", "patch", "delete"]
- apiGroups: [""]
  resources: ["services"]
  verbs: ["get", "list", "watch", "create", "patch"]
- apiGroups: [""]
  resources: ["configmaps"]
  verbs: ["get", "list", "watch", "create", "patch", "delete"]
# Revision records (one ControllerRevision per revision, as StatefulSets keep theirs): listed as the
# inventory, created with server-side apply, pruned to the history limit.
- apiGroups: ["apps"]
  resources: ["controllerrevisions"]
  verbs: ["list", "create", "patch", "delete"]
# Serving pods: watched to reconcile on readiness changes, listed to explain Pending and failing ones.
- apiGroups: [""]
  resources: ["pods"]
  verbs: ["list", "watch"]
# The gatewayAPI router: read the HTTPRoute a LAD names, patch only its two backendRefs' weights.
- apiGroups: ["gateway.networking.k8s.io"]
  resources: ["httproutes"]
  verbs: ["get", "patch"]
# backendKind InferencePool: one InferencePool per arm (the route's backendRefs), written with server-side apply.
- apiGroups: ["inference.networking.k8s.io"]
  resources: ["inferencepools"]
  verbs: ["get", "create", "patch"]
# spec.networkPolicy: the LAD's own NetworkPolicy, applied (server-side apply: patch, create when missing),
# listed by label and deleted when turned off.
- apiGroups: ["networking.k8s.io"]
  resources: ["networkpolicies"]
  verbs: ["get", "list", "create", "patch", "delete"]
# Events on LocalAttnDeployments (ours and kopf's).
- apiGroups: [""]
  resources: ["events"]
  verbs: ["create"]
{{- end }}

{{/*
Cross-field checks the schema cannot express. Included by the Deployment, so every render runs them.
*/}}
{{- define "localattn.validate" -}}
{{- if lt (int .Values.replicaCount) 1 }}
{{- fail (printf "replicaCount must be at least 1 (got %v)" .Values.replicaCount) }}
{{- end }}
{{- if and (gt (int .Values.replicaCount) 1) (not .Values.leaderElection.enabled) }}
{{- fail (printf "replicaCount %v needs leaderElection.enabled: without a leader, every replica would reconcile the same objects concurrently" .Values.replicaCount) }}
{{- end }}
{{- with .Values.leaderElection }}
{{- if and .enabled (not (and (lt (float64 .retryPeriodSeconds) (float64 .renewDeadlineSeconds)) (lt (float64 .renewDeadlineSeconds) (float64 .leaseDurationSeconds)))) }}
{{- fail (printf "leaderElection needs retryPeriodSeconds < renewDeadlineSeconds < leaseDurationSeconds (got %v, %v, %v): a leader must stop before its lease can be taken" .retryPeriodSeconds .renewDeadlineSeconds .leaseDurationSeconds) }}
{{- end }}
{{- end }}
{{- if and (not .Values.serviceAccount.create) (not .Values.serviceAccount.name) }}
{{- fail "serviceAccount.name is required when serviceAccount.create is false: name the existing ServiceAccount the operator should run as" }}
{{- end }}
{{- if eq (int .Values.metrics.port) (int .Values.health.port) }}
{{- fail (printf "metrics.port and health.port must differ (both are %v): the metrics server and kopf's liveness endpoint each bind their own port" .Values.metrics.port) }}
{{- end }}
{{- if le (float64 .Values.resyncSeconds) 0.0 }}
{{- fail (printf "resyncSeconds must be greater than 0 (got %v)" .Values.resyncSeconds) }}
{{- end }}
{{- $seen := dict }}
{{- range .Values.watchNamespaces }}
{{- if not (regexMatch "^[a-z0-9]([-a-z0-9]*[a-z0-9])?$" .) }}
{{- fail (printf "watchNamespaces: %q is not a valid namespace name (a lowercase RFC 1123 label)" .) }}
{{- end }}
{{- if hasKey $seen . }}
{{- fail (printf "watchNamespaces: %q is listed twice" .) }}
{{- end }}
{{- $_ := set $seen . true }}
{{- end }}
{{- end }}
