//! `bramble kubeconfig`: this client's connection (or a new user's token) as a kubeconfig,
//! for kubectl and the Kubernetes client libraries on another machine.

use anyhow::Result;
use bramble_api::client_config::ClientConfig;
use serde_json::json;

use crate::args::KubeconfigArgs;
use crate::client::Client;
use crate::config::Trust;

pub fn run(client: &Client, a: &KubeconfigArgs) -> Result<()> {
    let conn = client.connection();
    let (user, token) = match (&a.user, &a.role) {
        (Some(user), Some(role)) => {
            let v = client
                .post_json(
                    "/bramble/v1/tokens",
                    &json!({"user": user, "role": role, "description": "bramble kubeconfig"}),
                )?
                .ok()?
                .json()?;
            let token = v["token"].as_str().unwrap_or_default().to_string();
            (user.clone(), token)
        }
        _ => ("admin".to_string(), conn.token.clone()),
    };
    let config = ClientConfig {
        server: Some(a.server.clone().unwrap_or_else(|| conn.server.clone())),
        token: Some(token),
        certificate_authority_data: match &conn.trust {
            Trust::Ca(pem) => Some(pem.clone()),
            Trust::Nothing | Trust::Plain => None,
        },
    };
    let insecure = conn.trust == Trust::Nothing;
    print!("{}", config.kubeconfig("bramble", &user, insecure));
    Ok(())
}
