// Package deploy holds no code: its tests check the deployment files
// (compose, Kubernetes, nginx, Prometheus, Grafana), since no Docker engine
// or cluster runs where the tests do.
package deploy
