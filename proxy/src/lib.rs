//! bramble-proxy: turns Services and Endpoints into iptables rules (arrives with the
//! networking issue). The agent embeds this library; `bramble-proxy` runs it standalone.
