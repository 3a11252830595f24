package server

import "udp_iaasd/etcd"

// Status is /v1/status (API.md). The agent fills it; the fields named in
// API.md are a contract.
type Status struct {
	Version   string       `json:"version"`
	Ready     bool         `json:"ready"`
	Endpoints []string     `json:"endpoints"`
	Config    ConfigStatus `json:"config"`
	Etcd      EtcdStatus   `json:"etcd"`
}

// ConfigStatus describes the endpoints file as last applied and read.
type ConfigStatus struct {
	EndpointsFile string `json:"endpoints_file"`
	SHA256        string `json:"sha256"`
	AppliedAt     string `json:"applied_at"`
	Reloads       uint64 `json:"reloads"`
	LastError     string `json:"last_error"`
	LastErrorAt   string `json:"last_error_at"`
}

// EtcdStatus is the etcd client's health snapshot.
type EtcdStatus struct {
	Connected  bool                `json:"connected"`
	ClusterID  string              `json:"cluster_id"`
	Leader     string              `json:"leader"`
	Reconnects uint64              `json:"reconnects"`
	LastError  string              `json:"last_error"`
	Members    []etcd.MemberHealth `json:"members"`
}

// NotReadyReason says why the agent is not ready, for /readyz.
func (s Status) NotReadyReason() string {
	switch {
	case len(s.Endpoints) == 0 && s.Config.LastError != "":
		return "no valid endpoint set applied yet: " + s.Config.LastError
	case len(s.Endpoints) == 0:
		return "no valid endpoint set applied yet"
	case !s.Etcd.Connected && s.Etcd.LastError != "":
		return "etcd unreachable: " + s.Etcd.LastError
	case !s.Etcd.Connected:
		return "etcd has not answered yet"
	}
	return ""
}
