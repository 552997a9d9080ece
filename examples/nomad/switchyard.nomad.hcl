# An app and Switchyard beside it in one Nomad group: one allocation, one
# network namespace. Consul gets the service `web` at Switchyard's port;
# Switchyard forwards to the app on 127.0.0.1:3000, and gives the app a
# local way to the Consul service `api` (127.0.0.1:9001, the passing
# instances, followed as they change).
#
#   nomad job run examples/nomad/switchyard.nomad.hcl
#   bash examples/validate.sh            # parse, structure, drain arithmetic
#
# The Switchyard image is the repository's Dockerfile (`docker build -t
# switchyard .`) pushed where your clients pull from. The Consul agent on
# each client must listen on the node's address (client_addr), which is
# where CONSUL_HTTP_ADDR below points, and it runs the checks.
#
# How an allocation stops without failing a request (deploy, drain, stop):
#
#   t=0   Nomad deregisters the group's service from Consul, then waits
#         shutdown_delay (5 s) while Consul's watchers (other Switchyards,
#         consul-template, DNS) stop sending here.
#   t=5   The leader task, Switchyard, gets kill_signal (SIGTERM): it stops
#         accepting, /healthz answers 503, HTTP/1.1 responses carry
#         `Connection: close`, HTTP/2 gets GOAWAY; drain_timeout (10 s)
#         closes long-lived connections at t=15; [shutdown] grace (20 s)
#         ends the rest and Switchyard exits 0 by t=25. Nomad waits for a
#         leader to exit before it signals the other tasks: the app serves
#         every request Switchyard still forwards.
#   t=25  The app gets its kill_signal; it has kill_timeout (10 s).
#
# The arithmetic (examples/validate.sh checks it from this file):
#   Switchyard's kill_timeout 30 s >= grace 20 s + 5 s of margin. A client's
#   max_kill_timeout (default 30s) caps kill_timeout: raise it in the client
#   config before a longer grace.

job "web" {
  datacenters = ["dc1"]
  type        = "service"

  update {
    max_parallel     = 1
    health_check     = "checks"         # a new allocation is healthy once Consul says so
    min_healthy_time = "10s"
    healthy_deadline = "3m"
    auto_revert      = true
  }

  group "web" {
    count = 2

    network {
      mode = "bridge"
      port "http" {
        to = 8080                       # Switchyard's listener
      }
      port "admin" {
        to = 9900                       # Switchyard's admin API: the health check
      }
    }

    # Between deregistering the service and SIGTERM to the tasks.
    shutdown_delay = "5s"

    service {
      provider = "consul"
      name     = "web"
      port     = "http"
      tags     = ["http"]

      # 503 as soon as Switchyard drains; the Consul agent checks the
      # node's mapped port, hence admin binds 0.0.0.0 in the config below.
      check {
        name     = "switchyard healthz"
        type     = "http"
        port     = "admin"
        path     = "/healthz"
        interval = "5s"
        timeout  = "2s"
      }

      # The app, through Switchyard, as clients see it.
      check {
        name     = "app through switchyard"
        type     = "http"
        port     = "http"
        path     = "/"
        interval = "10s"
        timeout  = "2s"
      }
    }

    task "switchyard" {
      driver = "docker"

      # Stopped first, alone; the app only once Switchyard has exited.
      leader = true

      kill_signal  = "SIGTERM"
      kill_timeout = "30s"              # >= [shutdown] grace 20s + 5s

      config {
        image = "switchyard:latest"
        args  = ["run", "-c", "/local/switchyard.toml", "--log-format", "json"]
      }

      env {
        # Switchyard's Consul address when [consul] names none.
        CONSUL_HTTP_ADDR = "http://${attr.unique.network.ip-address}:8500"
      }

      # Written atomically by Nomad; Switchyard notices the change and
      # reloads by itself (no signal needed).
      template {
        destination = "local/switchyard.toml"
        change_mode = "noop"
        data        = <<-EOT
          [admin]
          # 0.0.0.0: the Consul agent's check comes in through the port
          # mapping, not over loopback.
          bind = "0.0.0.0:9900"

          [shutdown]
          grace = "20s"                 # kill_timeout must exceed it

          # Address from CONSUL_HTTP_ADDR (the task's env).
          [consul]
          stale = true

          # Inbound: what Consul's `web` instances point at.
          [[listeners]]
          name = "web"
          bind = "0.0.0.0:8080"
          mode = "http"
          default_backend = "app"
          drain_timeout = "10s"

          # Outbound, for the app: http://127.0.0.1:9001/ reaches `api`.
          [[listeners]]
          name = "api"
          bind = "127.0.0.1:9001"
          mode = "http"
          default_backend = "api"

          [[backends]]
          name = "app"
          servers = ["127.0.0.1:3000"]

          [[backends]]
          name = "api"
          consul_service = "api"          # passing instances only
          balance = "least_conn"
          EOT
      }

      resources {
        cpu    = 200
        memory = 128
      }
    }

    task "app" {
      driver = "docker"

      kill_signal  = "SIGTERM"
      kill_timeout = "10s"

      config {
        image = "hashicorp/http-echo:1.0"
        args  = ["-listen=127.0.0.1:3000", "-text=hello from web"]
      }

      resources {
        cpu    = 100
        memory = 64
      }
    }
  }
}
