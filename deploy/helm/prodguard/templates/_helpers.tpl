{{/* The labels of every object: deploy/base's two, and Helm's own. */}}
{{- define "prodguard.labels" -}}
app.kubernetes.io/name: prodguard
app.kubernetes.io/part-of: prodguard
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | quote }}
{{- end -}}

{{/* The image reference: registry/repository:tag, or @digest when a digest is given. */}}
{{- define "prodguard.image" -}}
{{- $repository := .Values.image.repository -}}
{{- if .Values.image.registry -}}
{{- $repository = printf "%s/%s" (trimSuffix "/" .Values.image.registry) .Values.image.repository -}}
{{- end -}}
{{- $tag := .Values.image.tag | default .Chart.AppVersion -}}
{{- if .Values.image.digest -}}
{{- printf "%s:%s@%s" $repository $tag .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" $repository $tag -}}
{{- end -}}
{{- end -}}

{{/* The namespaces prodguard never acts in: the value's, and the release's own. */}}
{{- define "prodguard.excludedNamespaces" -}}
{{- toJson (uniq (append .Values.excludedNamespaces .Release.Namespace)) -}}
{{- end -}}

{{/* The policy file's policies: section, checked to be one. */}}
{{- define "prodguard.policySettings" -}}
{{- if .Values.policySettings -}}
{{- $parsed := fromYaml .Values.policySettings -}}
{{- if hasKey $parsed "Error" -}}
{{- fail (printf "policySettings: not YAML: %s" (get $parsed "Error")) -}}
{{- end -}}
{{- if ne (keys $parsed | sortAlpha | join ",") "policies" -}}
{{- fail (printf "policySettings: must hold the policies: section alone, it holds the keys %s (set mode, admins, excludedNamespaces, productionNamespaces and maxExceptionDuration as values of their own)" (keys $parsed | sortAlpha | join ", ")) -}}
{{- end -}}
{{- .Values.policySettings -}}
{{- else -}}
{{- /* prodguard's own service account is exempt from rbac-hygiene: the one of this release. */ -}}
{{- .Files.Get "files/policies.yaml" | replace "system:serviceaccount:prodguard:prodguard" (printf "system:serviceaccount:%s:prodguard" .Release.Namespace) -}}
{{- end -}}
{{- end -}}
