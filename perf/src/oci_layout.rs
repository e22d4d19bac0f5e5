//! Test and benchmark images: OCI image layouts (the on-disk format `skopeo copy oci:DIR:TAG`
//! reads) built from pseudo-random layers, with real tar layers and a consistent config, so
//! real clients (skopeo, the Docker engine) accept them.
//!
//! Layout written: `DIR/oci-layout`, `DIR/index.json` (one entry per tag, named by the
//! `org.opencontainers.image.ref.name` annotation), `DIR/blobs/sha256/<hex>` for every config,
//! layer, manifest and index.

use std::io::Write;
use std::path::Path;

use sha2::Digest as _;

pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const OCI_LAYER_TAR: &str = "application/vnd.oci.image.layer.v1.tar";

/// A blob written into a layout: what a descriptor needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Descriptor {
    pub media_type: String,
    /// `sha256:<hex>`.
    pub digest: String,
    pub size: u64,
}

impl Descriptor {
    fn json(&self) -> serde_json::Value {
        serde_json::json!({
            "mediaType": self.media_type,
            "digest": self.digest,
            "size": self.size,
        })
    }
}

/// An image layout being written.
#[derive(Debug)]
pub struct Layout<'a> {
    dir: &'a Path,
    /// `index.json` entries.
    entries: Vec<serde_json::Value>,
    seed: u64,
}

fn sha256_hex(bytes: &[u8]) -> String {
    shoal_proto::types::hex(&sha2::Sha256::digest(bytes))
}

/// A tar archive holding one regular file `name` with `content` (ustar, no compression).
pub fn tar_with_file(name: &str, content: &[u8]) -> Vec<u8> {
    let mut header = [0u8; 512];
    let name_bytes = name.as_bytes();
    let name_len = name_bytes.len().min(99);
    header[..name_len].copy_from_slice(&name_bytes[..name_len]);
    let octal = |field: &mut [u8], value: u64| {
        let text = format!("{value:0width$o}", width = field.len() - 1);
        field[..text.len()].copy_from_slice(text.as_bytes());
    };
    octal(&mut header[100..108], 0o644); // mode
    octal(&mut header[108..116], 0); // uid
    octal(&mut header[116..124], 0); // gid
    octal(&mut header[124..136], content.len() as u64); // size
    octal(&mut header[136..148], 1_700_000_000); // mtime
    header[156] = b'0'; // regular file
    header[257..263].copy_from_slice(b"ustar\0");
    header[263..265].copy_from_slice(b"00");
    // The checksum is computed with its own field as spaces.
    header[148..156].copy_from_slice(b"        ");
    let checksum: u64 = header.iter().map(|&b| u64::from(b)).sum();
    let text = format!("{checksum:06o}\0 ");
    header[148..156].copy_from_slice(text.as_bytes());
    let mut tar = header.to_vec();
    tar.extend_from_slice(content);
    tar.resize(tar.len().div_ceil(512) * 512, 0);
    tar.extend_from_slice(&[0u8; 1024]); // end of archive
    tar
}

impl<'a> Layout<'a> {
    /// Starts a layout in `dir` (created if needed). `seed` makes its random layers.
    pub fn new(dir: &'a Path, seed: u64) -> std::io::Result<Layout<'a>> {
        std::fs::create_dir_all(dir.join("blobs/sha256"))?;
        std::fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#)?;
        Ok(Layout {
            dir,
            entries: Vec::new(),
            seed,
        })
    }

    /// Writes a blob, returns its descriptor.
    pub fn blob(&self, media_type: &str, bytes: &[u8]) -> std::io::Result<Descriptor> {
        let hex = sha256_hex(bytes);
        std::fs::write(self.dir.join("blobs/sha256").join(&hex), bytes)?;
        Ok(Descriptor {
            media_type: media_type.to_owned(),
            digest: format!("sha256:{hex}"),
            size: bytes.len() as u64,
        })
    }

    fn random_bytes(&mut self, len: usize) -> Vec<u8> {
        let mut state = self.seed | 1;
        let mut bytes = Vec::with_capacity(len + 8);
        while bytes.len() < len {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            bytes.extend_from_slice(&state.to_le_bytes());
        }
        bytes.truncate(len);
        self.seed = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        bytes
    }

    /// A single-platform image: `layer_sizes` random files, each in its own tar layer, and
    /// a config naming `architecture`. Returns the manifest's descriptor (not yet tagged).
    pub fn image(
        &mut self,
        architecture: &str,
        layer_sizes: &[usize],
    ) -> std::io::Result<Descriptor> {
        let mut layers = Vec::new();
        let mut diff_ids = Vec::new();
        for (i, &size) in layer_sizes.iter().enumerate() {
            let content = self.random_bytes(size);
            let tar = tar_with_file(&format!("file{i}"), &content);
            let layer = self.blob(OCI_LAYER_TAR, &tar)?;
            diff_ids.push(layer.digest.clone());
            layers.push(layer.json());
        }
        let config = serde_json::json!({
            "architecture": architecture,
            "os": "linux",
            "config": {},
            "rootfs": { "type": "layers", "diff_ids": diff_ids },
        });
        let config = self.blob(OCI_CONFIG, config.to_string().as_bytes())?;
        let manifest = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": config.json(),
            "layers": layers,
        });
        self.blob(OCI_MANIFEST, manifest.to_string().as_bytes())
    }

    /// An image index over `manifests`, each `(descriptor, architecture)`.
    pub fn index(&mut self, manifests: &[(Descriptor, &str)]) -> std::io::Result<Descriptor> {
        let entries: Vec<serde_json::Value> = manifests
            .iter()
            .map(|(descriptor, architecture)| {
                let mut json = descriptor.json();
                json["platform"] =
                    serde_json::json!({ "architecture": architecture, "os": "linux" });
                json
            })
            .collect();
        let index = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": OCI_INDEX,
            "manifests": entries,
        });
        self.blob(OCI_INDEX, index.to_string().as_bytes())
    }

    /// Names `descriptor` `tag` in `index.json`.
    pub fn tag(&mut self, descriptor: &Descriptor, tag: &str) {
        let mut json = descriptor.json();
        json["annotations"] = serde_json::json!({ "org.opencontainers.image.ref.name": tag });
        self.entries.push(json);
    }

    /// Writes `index.json`.
    pub fn finish(self) -> std::io::Result<()> {
        let index = serde_json::json!({ "schemaVersion": 2, "manifests": self.entries });
        let mut file = std::fs::File::create(self.dir.join("index.json"))?;
        file.write_all(index.to_string().as_bytes())?;
        file.sync_all()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tar_headers_carry_a_valid_checksum_and_size() {
        let tar = tar_with_file("hello", b"hello world");
        assert_eq!(tar.len() % 512, 0);
        assert_eq!(&tar[257..262], b"ustar");
        let size = std::str::from_utf8(&tar[124..135]).unwrap();
        assert_eq!(u64::from_str_radix(size, 8).unwrap(), 11);
        let stored = std::str::from_utf8(&tar[148..154]).unwrap();
        let mut header = tar[..512].to_vec();
        header[148..156].copy_from_slice(b"        ");
        let sum: u64 = header.iter().map(|&b| u64::from(b)).sum();
        assert_eq!(u64::from_str_radix(stored, 8).unwrap(), sum);
        assert_eq!(&tar[512..523], b"hello world");
    }

    #[test]
    fn a_layout_holds_every_blob_it_names() {
        let dir = std::env::temp_dir().join(format!("shoal-oci-layout-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let mut layout = Layout::new(&dir, 3).unwrap();
        let amd64 = layout.image("amd64", &[1000, 20_000]).unwrap();
        let arm64 = layout.image("arm64", &[3000]).unwrap();
        let index = layout
            .index(&[(amd64.clone(), "amd64"), (arm64, "arm64")])
            .unwrap();
        layout.tag(&amd64, "single");
        layout.tag(&index, "multi");
        layout.finish().unwrap();
        let index_json: serde_json::Value =
            serde_json::from_slice(&std::fs::read(dir.join("index.json")).unwrap()).unwrap();
        assert_eq!(index_json["manifests"].as_array().unwrap().len(), 2);
        // Every blob's name is its digest.
        for entry in std::fs::read_dir(dir.join("blobs/sha256")).unwrap() {
            let entry = entry.unwrap();
            let bytes = std::fs::read(entry.path()).unwrap();
            assert_eq!(entry.file_name().to_string_lossy(), sha256_hex(&bytes));
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
