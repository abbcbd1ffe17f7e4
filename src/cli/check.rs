//! `kiln check`: load a version directory, run one forward pass, print its signature.

use std::path::PathBuf;

/// `kiln check`'s flags.
#[derive(clap::Args)]
pub struct Args {
    /// A version directory: holds model.json and model.safetensors.
    pub dir: PathBuf,
    /// Compute device: cpu or cuda:N.
    #[arg(long, env = "KILN_DEVICE", default_value = "cpu")]
    pub device: String,
}

pub fn run(a: &Args) -> anyhow::Result<()> {
    let dir = &a.dir;
    super::set_compute_threads(1);
    let device: kiln::device::DeviceSpec = a.device.parse().map_err(anyhow::Error::msg)?;
    let device = device.open()?;
    let started = std::time::Instant::now();
    let files = kiln::store::read_version_dir(dir)?;
    let model = match kiln::store::load_any(&files, &device)? {
        kiln::store::Loaded::Layers(model) => model,
        kiln::store::Loaded::Text(model) => {
            let spec = model.spec();
            println!(
                "ok: {} loaded and embedded one input in {:.1} ms",
                dir.display(),
                started.elapsed().as_secs_f64() * 1e3
            );
            println!(
                "transformer: {}, {} pooling, normalize {}, max_length {}",
                spec.architecture.as_str(),
                spec.pooling.as_str(),
                spec.normalize,
                spec.max_length
            );
            if model.is_classifier() {
                println!(
                    "input:   {}",
                    if spec.pairs {
                        "pairs of texts"
                    } else {
                        "texts"
                    }
                );
                println!(
                    "output:  float32 [{}] per input, labels {:?}",
                    model.output_size(),
                    model.labels()
                );
            } else {
                println!("input:   texts");
                println!("output:  float32 [{}] per text", model.hidden_size());
            }
            return Ok(());
        }
    };
    let spec = model.spec();
    println!(
        "ok: {} loaded and ran one forward pass in {:.1} ms",
        dir.display(),
        started.elapsed().as_secs_f64() * 1e3
    );
    println!("task:    {:?}", spec.task);
    println!(
        "input:   {} {:?} (batch first: [-1, ...])",
        spec.input.dtype.as_str(),
        spec.input.shape
    );
    if let Some(f) = &spec.input.features {
        println!("features: {}", f.join(", "));
    }
    println!("output:  float32 {:?}", model.output_shape());
    if !spec.labels.is_empty() {
        println!("labels:  {}", spec.labels.join(", "));
    }
    println!(
        "layers:  {}",
        spec.layers
            .iter()
            .map(|l| l.kind())
            .collect::<Vec<_>>()
            .join(" → ")
    );
    for t in model.unused_tensors() {
        println!("warning: tensor '{t}' is not used by any layer");
    }
    Ok(())
}
