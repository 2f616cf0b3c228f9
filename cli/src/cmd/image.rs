//! `bramble image import|ls|rm`: the master's images, which agents pull from it.

use anyhow::{Context, Result, anyhow};
use bramble_api::Object;

use crate::args::ImageCommand;
use crate::client::Client;
use crate::cmd::{encode, now};
use crate::table;

pub fn run(client: &Client, cmd: &ImageCommand) -> Result<()> {
    match cmd {
        ImageCommand::Import { file, name } => {
            if let Some(n) = name {
                bramble_api::image::ImageRef::parse(n).map_err(|e| anyhow!("--name: {e}"))?;
            }
            let mut path = "/bramble/v1/images".to_string();
            if let Some(n) = name {
                path.push_str(&format!("?name={}", encode(n)));
            }
            let reply = if file == "-" {
                client.post_stream(&path, &mut std::io::stdin().lock())?
            } else {
                let mut f = std::fs::File::open(file).with_context(|| file.clone())?;
                client.post_stream(&path, &mut f)?
            };
            let v = reply.ok()?.json()?;
            for i in v["items"].as_array().into_iter().flatten() {
                let platforms: Vec<String> = i["spec"]["platforms"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|p| {
                        bramble_api::image::platform_string(
                            p["os"].as_str().unwrap_or(""),
                            p["architecture"].as_str().unwrap_or(""),
                            p["variant"].as_str().unwrap_or(""),
                        )
                    })
                    .collect();
                println!(
                    "imported {} {} ({})",
                    i["spec"]["reference"].as_str().unwrap_or(""),
                    i["spec"]["digest"].as_str().unwrap_or(""),
                    platforms.join(", ")
                );
            }
        }
        ImageCommand::Ls => {
            let v = client.get("/apis/bramble.io/v1/images")?.ok()?.json()?;
            let now = now();
            let mut rows: Vec<Vec<String>> = v["items"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|i| Object::from_value(i.clone()).ok())
                .map(|o| table::row(&o, false, false, now))
                .collect();
            rows.sort();
            if rows.is_empty() {
                eprintln!("No images found; import one with `bramble image import FILE`.");
            } else {
                let headers = table::headers(bramble_api::Kind::Image, false, false);
                print!("{}", table::print(Some(&headers), &rows));
            }
        }
        ImageCommand::Rm { references, force } => {
            let mut failed = 0;
            for r in references {
                let path = format!(
                    "/bramble/v1/images?reference={}{}",
                    encode(r),
                    if *force { "&force=true" } else { "" }
                );
                match client.delete_plain(&path)?.ok() {
                    Ok(_) => println!("removed {r}"),
                    Err(e) => {
                        eprintln!("error: {e}");
                        failed += 1;
                    }
                }
            }
            if failed > 0 {
                return Err(anyhow!("{failed} image(s) not removed"));
            }
        }
    }
    Ok(())
}
