//! Images in containerd: importing archives (OCI image layout and `docker save`, plain or
//! gzip-compressed) into the content store, unpacking layers into the snapshotter,
//! resolving a pod's image reference to its config and root snapshot, listing and removal.
//!
//! Debian's containerd 1.6 has no Transfer service, so this module does the client's part:
//! blobs go through Content.Write, layers through Snapshots.Prepare + Diff.Apply +
//! Snapshots.Commit, all under a lease, and the GC labels tie image → manifest → config
//! and layers → snapshot, as containerd's own client does.

use crate::containerd::{is_not_found, Containerd, SNAPSHOTTER};
use anyhow::{anyhow, bail, Context, Result};
use containerd_client::services::v1::{
    snapshots::{CommitSnapshotRequest, PrepareSnapshotRequest, StatSnapshotRequest},
    ApplyRequest, CreateImageRequest, DeleteImageRequest, GetImageRequest, Image, InfoRequest,
    ListImagesRequest, ReadContentRequest, UpdateImageRequest, UpdateRequest, WriteAction,
    WriteContentRequest,
};
use containerd_client::types::Descriptor;
use oci_spec::image::{ImageConfiguration, ImageIndex, ImageManifest};
use std::collections::BTreeMap;
use std::io::Read;
use std::path::Path;

pub(crate) const MT_OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub(crate) const MT_OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub(crate) const MT_DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub(crate) const MT_DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
const MT_DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
const MT_DOCKER_LAYER: &str = "application/vnd.docker.image.rootfs.diff.tar";

/// `sha256:<hex>` of `data`.
pub fn digest(data: &[u8]) -> String {
    let d = ring::digest::digest(&ring::digest::SHA256, data);
    let mut s = String::with_capacity(71);
    s.push_str("sha256:");
    for b in d.as_ref() {
        s.push_str(&format!("{b:02x}"));
    }
    s
}

/// The fully qualified name of an image reference, as upstream normalizes it:
/// `busybox` → `docker.io/library/busybox:latest`.
pub fn normalize(reference: &str) -> String {
    let (name, tag_or_digest) = match reference.find('@') {
        Some(i) => (&reference[..i], reference[i..].to_string()),
        None => {
            let slash = reference.rfind('/').map(|i| i + 1).unwrap_or(0);
            match reference[slash..].rfind(':') {
                Some(i) => (&reference[..slash + i], reference[slash + i..].to_string()),
                None => (reference, ":latest".to_string()),
            }
        }
    };
    let first = name.split('/').next().unwrap_or_default();
    let has_registry =
        name.contains('/') && (first.contains('.') || first.contains(':') || first == "localhost");
    let full = if has_registry {
        name.to_string()
    } else if name.contains('/') {
        format!("docker.io/{name}")
    } else {
        format!("docker.io/library/{name}")
    };
    format!("{full}{tag_or_digest}")
}

/// The imageID a container status shows, as containerd's CRI reports it: the image's
/// repository digest (`kite.test/hello@sha256:…`, the name without its tag, at the
/// manifest or index the name points at).
pub fn repo_digest(name: &str, target: &str) -> String {
    let repo = match name.find('@') {
        Some(i) => &name[..i],
        None => {
            let slash = name.rfind('/').map(|i| i + 1).unwrap_or(0);
            match name[slash..].rfind(':') {
                Some(i) => &name[..slash + i],
                None => name,
            }
        }
    };
    format!("{repo}@{target}")
}

/// One image to store: its name(s) and top-level manifest (or index).
pub(crate) struct Archived {
    pub names: Vec<String>,
    pub manifest: Descriptor,
}

/// Blobs by digest: (media type, bytes). A pull leaves out layers containerd already has.
pub(crate) type Blobs = BTreeMap<String, (String, Vec<u8>)>;

/// Imports every image in the archive at `path`; returns their names.
pub async fn import_file(cd: &Containerd, path: &Path) -> Result<Vec<String>> {
    let raw = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let data = decompress(&path.to_string_lossy(), raw)
        .with_context(|| format!("decompressing {}", path.display()))?;
    import_tar(cd, &data)
        .await
        .with_context(|| format!("importing {}", path.display()))
}

/// The tar inside an archive named `.tar`, `.tar.gz`/`.tgz` or `.tar.zst`.
fn decompress(name: &str, raw: Vec<u8>) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    if name.ends_with(".gz") || name.ends_with(".tgz") {
        flate2::read::GzDecoder::new(&raw[..]).read_to_end(&mut out)?;
    } else if name.ends_with(".zst") {
        let mut src = &raw[..];
        ruzstd::decoding::StreamingDecoder::new(&mut src)
            .map_err(|e| anyhow!("not a zstd stream: {e}"))?
            .read_to_end(&mut out)?;
    } else {
        return Ok(raw);
    }
    Ok(out)
}

/// Imports an OCI image layout or `docker save` tar held in memory.
pub async fn import_tar(cd: &Containerd, data: &[u8]) -> Result<Vec<String>> {
    let mut files: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    let mut ar = tar::Archive::new(data);
    for entry in ar.entries().context("not a tar archive")? {
        let mut e = entry.context("reading the archive")?;
        if !e.header().entry_type().is_file() {
            continue;
        }
        let p = e
            .path()?
            .to_string_lossy()
            .trim_start_matches("./")
            .to_string();
        let mut buf = Vec::with_capacity(e.size() as usize);
        e.read_to_end(&mut buf)?;
        files.insert(p, buf);
    }
    let mut blobs = Blobs::new();
    let images = if files.contains_key("index.json") {
        oci_layout(&files, &mut blobs)?
    } else if files.contains_key("manifest.json") {
        docker_save(&files, &mut blobs)?
    } else {
        bail!(
            "neither an OCI image layout (index.json) nor a `docker save` archive (manifest.json)"
        );
    };
    if images.is_empty() {
        bail!("the archive names no image (no io.containerd.image.name annotation or RepoTags)");
    }
    store(cd, images, blobs).await
}

/// Stores images whose blobs are at hand, under one lease, and names them.
pub(crate) async fn store(
    cd: &Containerd,
    images: Vec<Archived>,
    blobs: Blobs,
) -> Result<Vec<String>> {
    let cd2 = cd.clone();
    cd2.with_lease(|cd| async move {
        let mut names = Vec::new();
        for img in images {
            store_image(&cd, &img, &blobs).await?;
            for n in &img.names {
                put_image(&cd, n, &img.manifest).await?;
                names.push(n.clone());
            }
        }
        Ok(names)
    })
    .await
}

fn oci_layout(
    files: &BTreeMap<String, Vec<u8>>,
    blobs: &mut BTreeMap<String, (String, Vec<u8>)>,
) -> Result<Vec<Archived>> {
    for (p, b) in files {
        if let Some(hex) = p.strip_prefix("blobs/sha256/") {
            blobs.insert(format!("sha256:{hex}"), (String::new(), b.clone()));
        }
    }
    let index: ImageIndex =
        serde_json::from_slice(&files["index.json"]).context("parsing index.json")?;
    let mut out = Vec::new();
    for m in index.manifests() {
        let ann = m.annotations().clone().unwrap_or_default();
        let name = ann.get("io.containerd.image.name").cloned().or_else(|| {
            ann.get("org.opencontainers.image.ref.name")
                .filter(|r| r.contains('/') || r.contains(':'))
                .cloned()
        });
        let Some(name) = name else { continue };
        out.push(Archived {
            names: vec![normalize(&name)],
            manifest: Descriptor {
                media_type: m.media_type().to_string(),
                digest: m.digest().to_string(),
                size: m.size() as i64,
                annotations: Default::default(),
            },
        });
    }
    Ok(out)
}

/// A `docker save` archive: layers are uncompressed tars; kite writes the Docker v2
/// manifest the archive does not carry.
fn docker_save(
    files: &BTreeMap<String, Vec<u8>>,
    blobs: &mut BTreeMap<String, (String, Vec<u8>)>,
) -> Result<Vec<Archived>> {
    #[derive(serde::Deserialize)]
    #[serde(rename_all = "PascalCase")]
    struct Entry {
        config: String,
        #[serde(default)]
        repo_tags: Option<Vec<String>>,
        layers: Vec<String>,
    }
    let entries: Vec<Entry> =
        serde_json::from_slice(&files["manifest.json"]).context("parsing manifest.json")?;
    let mut out = Vec::new();
    for e in entries {
        let get = |p: &str| {
            files
                .get(p)
                .ok_or_else(|| anyhow!("manifest.json names {p}, which the archive lacks"))
        };
        let config = get(&e.config)?;
        let config_d = digest(config);
        blobs.insert(config_d.clone(), (MT_DOCKER_CONFIG.into(), config.clone()));
        let mut layers = Vec::new();
        for l in &e.layers {
            let b = get(l)?;
            let d = digest(b);
            layers.push(
                serde_json::json!({"mediaType": MT_DOCKER_LAYER, "digest": d, "size": b.len()}),
            );
            blobs.insert(d, (MT_DOCKER_LAYER.into(), b.clone()));
        }
        let manifest = serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2,
            "mediaType": MT_DOCKER_MANIFEST,
            "config": {"mediaType": MT_DOCKER_CONFIG, "digest": config_d, "size": config.len()},
            "layers": layers,
        }))?;
        let md = digest(&manifest);
        let size = manifest.len() as i64;
        blobs.insert(md.clone(), (MT_DOCKER_MANIFEST.into(), manifest));
        let names: Vec<String> = e
            .repo_tags
            .unwrap_or_default()
            .iter()
            .map(|t| normalize(t))
            .collect();
        if names.is_empty() {
            continue;
        }
        out.push(Archived {
            names,
            manifest: Descriptor {
                media_type: MT_DOCKER_MANIFEST.into(),
                digest: md,
                size,
                annotations: Default::default(),
            },
        });
    }
    Ok(out)
}

/// Writes the manifest (or index: this platform's manifest) and everything it references,
/// then unpacks the layers.
async fn store_image(cd: &Containerd, img: &Archived, blobs: &Blobs) -> Result<()> {
    let blob = |d: &str| {
        blobs
            .get(d)
            .map(|(_, b)| b)
            .ok_or_else(|| anyhow!("the archive lacks blob {d}"))
    };
    let mut manifest_desc = img.manifest.clone();
    if manifest_desc.media_type == MT_OCI_INDEX || manifest_desc.media_type == MT_DOCKER_LIST {
        let raw = blob(&manifest_desc.digest)?;
        let index: ImageIndex = serde_json::from_slice(raw)?;
        let m = pick_platform(&index)?;
        write_blob(
            cd,
            &manifest_desc.digest,
            raw,
            &[("containerd.io/gc.ref.content.m.0", m.digest.clone())],
        )
        .await?;
        manifest_desc = m;
    }
    let raw = blob(&manifest_desc.digest)?;
    let manifest: ImageManifest =
        serde_json::from_slice(raw).context("parsing the image manifest")?;
    let config_raw = blob(manifest.config().digest().as_ref())?;
    let config: ImageConfiguration =
        serde_json::from_slice(config_raw).context("parsing the image config")?;
    let diff_ids = config.rootfs().diff_ids();
    if diff_ids.len() != manifest.layers().len() {
        bail!(
            "the image config lists {} layers, the manifest {}",
            diff_ids.len(),
            manifest.layers().len()
        );
    }
    for (i, l) in manifest.layers().iter().enumerate() {
        let d = l.digest().to_string();
        let data = match blobs.get(&d) {
            Some((_, b)) => b.as_slice(),
            None if has_blob(cd, &d).await => &[],
            None => bail!("the archive lacks blob {d}"),
        };
        write_blob(
            cd,
            &d,
            data,
            &[("containerd.io/uncompressed", diff_ids[i].clone())],
        )
        .await?;
    }
    let chain = chain_ids(diff_ids);
    unpack(cd, &manifest, &chain).await?;
    let top = chain.last().cloned().unwrap_or_default();
    write_blob(
        cd,
        manifest.config().digest().as_ref(),
        config_raw,
        &[(&format!("containerd.io/gc.ref.snapshot.{SNAPSHOTTER}"), top)],
    )
    .await?;
    let mut refs: Vec<(String, String)> = vec![(
        "containerd.io/gc.ref.content.config".into(),
        manifest.config().digest().to_string(),
    )];
    for (i, l) in manifest.layers().iter().enumerate() {
        refs.push((
            format!("containerd.io/gc.ref.content.l.{i}"),
            l.digest().to_string(),
        ));
    }
    let refs: Vec<(&str, String)> = refs.iter().map(|(k, v)| (k.as_str(), v.clone())).collect();
    write_blob(cd, &manifest_desc.digest, raw, &refs).await?;
    Ok(())
}

pub(crate) fn pick_platform(index: &ImageIndex) -> Result<Descriptor> {
    let arch = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        a => a,
    };
    let m = index
        .manifests()
        .iter()
        .find(|m| {
            m.platform().as_ref().is_none_or(|p| {
                p.architecture().to_string() == arch && p.os().to_string() == "linux"
            })
        })
        .ok_or_else(|| anyhow!("the image has no manifest for linux/{arch}"))?;
    Ok(Descriptor {
        media_type: m.media_type().to_string(),
        digest: m.digest().to_string(),
        size: m.size() as i64,
        annotations: Default::default(),
    })
}

/// The OCI chain IDs of a layer stack: chain(0) = diff(0), chain(n) = sha256(chain(n-1) + " " + diff(n)).
pub fn chain_ids(diff_ids: &[String]) -> Vec<String> {
    let mut out: Vec<String> = Vec::with_capacity(diff_ids.len());
    for d in diff_ids {
        let next = match out.last() {
            None => d.clone(),
            Some(prev) => digest(format!("{prev} {d}").as_bytes()),
        };
        out.push(next);
    }
    out
}

/// Whether containerd's content store has the blob.
pub(crate) async fn has_blob(cd: &Containerd, d: &str) -> bool {
    cd.content()
        .info(cd.req(InfoRequest { digest: d.into() }))
        .await
        .is_ok()
}

async fn write_blob(
    cd: &Containerd,
    d: &str,
    data: &[u8],
    labels: &[(&str, String)],
) -> Result<()> {
    let labels: std::collections::HashMap<String, String> = labels
        .iter()
        .map(|(k, v)| (k.to_string(), v.clone()))
        .collect();
    // Present already: only (re)set the labels.
    if cd
        .content()
        .info(cd.req(InfoRequest { digest: d.into() }))
        .await
        .is_ok()
    {
        if !labels.is_empty() {
            let paths = labels.keys().map(|k| format!("labels.{k}")).collect();
            cd.content()
                .update(cd.req(UpdateRequest {
                    info: Some(containerd_client::services::v1::Info {
                        digest: d.into(),
                        labels,
                        ..Default::default()
                    }),
                    update_mask: Some(prost_types::FieldMask { paths }),
                }))
                .await
                .with_context(|| format!("labelling {d}"))?;
        }
        return Ok(());
    }
    let total = data.len() as i64;
    let r#ref = format!("kite-import-{d}");
    let mut reqs = Vec::new();
    let chunk = 1 << 20;
    let mut off = 0usize;
    while off < data.len() {
        let end = (off + chunk).min(data.len());
        reqs.push(WriteContentRequest {
            action: WriteAction::Write as i32,
            r#ref: r#ref.clone(),
            total,
            expected: d.into(),
            offset: off as i64,
            data: data[off..end].to_vec(),
            labels: Default::default(),
        });
        off = end;
    }
    reqs.push(WriteContentRequest {
        action: WriteAction::Commit as i32,
        r#ref,
        total,
        expected: d.into(),
        offset: total,
        data: Vec::new(),
        labels,
    });
    let mut stream = cd
        .content()
        .write(cd.req_unbounded(futures::stream::iter(reqs)))
        .await
        .with_context(|| format!("writing {d}"))?
        .into_inner();
    loop {
        match stream.message().await {
            Ok(Some(_)) => {}
            Ok(None) => break,
            Err(s) if s.code() == tonic::Code::AlreadyExists => break,
            Err(s) => return Err(anyhow::Error::from(s).context(format!("writing {d}"))),
        }
    }
    Ok(())
}

async fn unpack(cd: &Containerd, manifest: &ImageManifest, chain: &[String]) -> Result<()> {
    let mut parent = String::new();
    for (i, layer) in manifest.layers().iter().enumerate() {
        let id = &chain[i];
        let have = cd
            .snapshots()
            .stat(cd.req(StatSnapshotRequest {
                snapshotter: SNAPSHOTTER.into(),
                key: id.clone(),
            }))
            .await;
        if have.is_err() {
            let key = format!("extract-{}-{id}", uuid::Uuid::new_v4().simple());
            let mounts = cd
                .snapshots()
                .prepare(cd.req(PrepareSnapshotRequest {
                    snapshotter: SNAPSHOTTER.into(),
                    key: key.clone(),
                    parent: parent.clone(),
                    labels: Default::default(),
                }))
                .await
                .with_context(|| format!("preparing a snapshot for layer {i}"))?
                .into_inner()
                .mounts;
            cd.diff()
                .apply(cd.req_unbounded(ApplyRequest {
                    diff: Some(Descriptor {
                        media_type: layer.media_type().to_string(),
                        digest: layer.digest().to_string(),
                        size: layer.size() as i64,
                        annotations: Default::default(),
                    }),
                    mounts,
                    payloads: Default::default(),
                    sync_fs: false,
                }))
                .await
                .with_context(|| format!("applying layer {i} ({})", layer.digest()))?;
            let commit = cd
                .snapshots()
                .commit(cd.req(CommitSnapshotRequest {
                    snapshotter: SNAPSHOTTER.into(),
                    name: id.clone(),
                    key,
                    labels: [("containerd.io/snapshot.ref".to_string(), id.clone())].into(),
                }))
                .await;
            if let Err(s) = commit {
                if s.code() != tonic::Code::AlreadyExists {
                    return Err(anyhow::Error::from(s).context(format!("committing layer {i}")));
                }
            }
        }
        parent = id.clone();
    }
    Ok(())
}

async fn put_image(cd: &Containerd, name: &str, target: &Descriptor) -> Result<()> {
    let image = Image {
        name: name.into(),
        labels: Default::default(),
        target: Some(target.clone()),
        created_at: None,
        updated_at: None,
    };
    match cd
        .images()
        .create(cd.req(CreateImageRequest {
            image: Some(image.clone()),
            source_date_epoch: None,
        }))
        .await
    {
        Ok(_) => Ok(()),
        Err(s) if s.code() == tonic::Code::AlreadyExists => {
            cd.images()
                .update(cd.req(UpdateImageRequest {
                    image: Some(image),
                    update_mask: Some(prost_types::FieldMask {
                        paths: vec!["target".into()],
                    }),
                    source_date_epoch: None,
                }))
                .await
                .with_context(|| format!("updating image {name}"))?;
            Ok(())
        }
        Err(s) => Err(anyhow::Error::from(s).context(format!("creating image {name}"))),
    }
}

/// What a container needs from its image.
#[derive(Debug, Clone)]
pub struct Resolved {
    pub name: String,
    /// `sha256:…` of the image's config, the imageID kubectl shows.
    pub id: String,
    pub config: ImageConfiguration,
    /// The committed snapshot holding the unpacked root filesystem.
    pub top_snapshot: String,
    /// What the image name pointed at when this was resolved.
    pub target: String,
}

/// Resolutions by image name, re-used while the name still points at the same target:
/// a container start then costs one Images.Get instead of reading manifest and config.
#[derive(Default)]
pub struct Cache(std::sync::Mutex<std::collections::HashMap<String, Resolved>>);

impl Cache {
    pub async fn resolve(&self, cd: &Containerd, name: &str) -> Result<Option<Resolved>> {
        let target = match cd
            .images()
            .get(cd.req(GetImageRequest { name: name.into() }))
            .await
        {
            Ok(r) => r
                .into_inner()
                .image
                .and_then(|i| i.target)
                .map(|t| t.digest),
            Err(s) if s.code() == tonic::Code::NotFound => None,
            Err(s) => return Err(s.into()),
        };
        let Some(target) = target else {
            self.0.lock().unwrap().remove(name);
            return Ok(None);
        };
        if let Some(r) = self
            .0
            .lock()
            .unwrap()
            .get(name)
            .filter(|r| r.target == target)
        {
            return Ok(Some(r.clone()));
        }
        let r = resolve(cd, name).await?;
        if let Some(r) = &r {
            self.0.lock().unwrap().insert(name.to_string(), r.clone());
        }
        Ok(r)
    }
}

async fn read_blob(cd: &Containerd, d: &str) -> Result<Vec<u8>> {
    let mut s = cd
        .content()
        .read(cd.req(ReadContentRequest {
            digest: d.into(),
            offset: 0,
            size: 0,
        }))
        .await?
        .into_inner();
    let mut out = Vec::new();
    while let Some(m) = s.message().await? {
        out.extend_from_slice(&m.data);
    }
    Ok(out)
}

/// Looks up an image by (normalized) name; `Ok(None)` when containerd does not have it.
pub async fn resolve(cd: &Containerd, name: &str) -> Result<Option<Resolved>> {
    let img = match cd
        .images()
        .get(cd.req(GetImageRequest { name: name.into() }))
        .await
    {
        Ok(r) => r.into_inner().image,
        Err(s) if s.code() == tonic::Code::NotFound => return Ok(None),
        Err(s) => return Err(s.into()),
    };
    let Some(target) = img.and_then(|i| i.target) else {
        return Ok(None);
    };
    let target_digest = target.digest.clone();
    let mut desc = target;
    if desc.media_type == MT_OCI_INDEX || desc.media_type == MT_DOCKER_LIST {
        let index: ImageIndex = serde_json::from_slice(&read_blob(cd, &desc.digest).await?)?;
        desc = pick_platform(&index)?;
    }
    let manifest: ImageManifest = match read_blob(cd, &desc.digest).await {
        Ok(b) => serde_json::from_slice(&b)?,
        Err(e) if is_not_found(&e) => return Ok(None),
        Err(e) => return Err(e),
    };
    if ![MT_OCI_MANIFEST, MT_DOCKER_MANIFEST].contains(&desc.media_type.as_str()) {
        bail!("unsupported manifest type {}", desc.media_type);
    }
    let id = manifest.config().digest().to_string();
    let config: ImageConfiguration = serde_json::from_slice(&read_blob(cd, &id).await?)?;
    let chain = chain_ids(config.rootfs().diff_ids());
    let top = chain.last().cloned().unwrap_or_default();
    // Unpacked? (An image pulled by another client may not be.)
    let unpacked = cd
        .snapshots()
        .stat(cd.req(StatSnapshotRequest {
            snapshotter: SNAPSHOTTER.into(),
            key: top.clone(),
        }))
        .await
        .is_ok();
    if !unpacked {
        cd.with_lease(|cd| {
            let (m, c) = (manifest.clone(), chain.clone());
            async move { unpack(&cd, &m, &c).await }
        })
        .await?;
    }
    Ok(Some(Resolved {
        name: name.into(),
        id,
        config,
        top_snapshot: top,
        target: target_digest,
    }))
}

/// One row of `kite images ls`.
pub struct Listed {
    pub name: String,
    pub digest: String,
    pub size: i64,
}

pub async fn list(cd: &Containerd) -> Result<Vec<Listed>> {
    let images = cd
        .images()
        .list(cd.req(ListImagesRequest { filters: vec![] }))
        .await?
        .into_inner()
        .images;
    let mut out = Vec::new();
    for i in images {
        let t = i.target.unwrap_or_default();
        let mut size = t.size;
        let mut manifest = t.digest.clone();
        if t.media_type == MT_OCI_INDEX || t.media_type == MT_DOCKER_LIST {
            let picked = read_blob(cd, &t.digest)
                .await
                .ok()
                .and_then(|b| serde_json::from_slice::<ImageIndex>(&b).ok())
                .and_then(|x| pick_platform(&x).ok());
            if let Some(d) = picked {
                size += d.size;
                manifest = d.digest;
            }
        }
        if let Ok(b) = read_blob(cd, &manifest).await {
            if let Ok(m) = serde_json::from_slice::<ImageManifest>(&b) {
                size += m.config().size() as i64
                    + m.layers().iter().map(|l| l.size() as i64).sum::<i64>();
            }
        }
        out.push(Listed {
            name: i.name,
            digest: t.digest,
            size,
        });
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

/// Removes an image name; containerd's GC then frees what nothing else references.
pub async fn remove(cd: &Containerd, name: &str) -> Result<()> {
    let name = normalize(name);
    match cd
        .images()
        .delete(cd.req(DeleteImageRequest {
            name: name.clone(),
            sync: true,
            target: None,
        }))
        .await
    {
        Ok(_) => Ok(()),
        Err(s) if s.code() == tonic::Code::NotFound => bail!("image {name} not found"),
        Err(s) => Err(anyhow::Error::from(s).context(format!("removing {name}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repo_digest_drops_the_tag_only() {
        let d = "sha256:0123";
        assert_eq!(
            repo_digest("kite.test/hello:1", d),
            "kite.test/hello@sha256:0123"
        );
        assert_eq!(
            repo_digest("localhost:5000/team/app:v2", d),
            "localhost:5000/team/app@sha256:0123"
        );
        assert_eq!(
            repo_digest("localhost:5000/app", d),
            "localhost:5000/app@sha256:0123"
        );
        assert_eq!(
            repo_digest("docker.io/library/busybox@sha256:9999", d),
            "docker.io/library/busybox@sha256:0123"
        );
    }

    #[test]
    fn normalizes_like_upstream() {
        assert_eq!(normalize("busybox"), "docker.io/library/busybox:latest");
        assert_eq!(normalize("nginx:1.27"), "docker.io/library/nginx:1.27");
        assert_eq!(normalize("kite.test/hello:1"), "kite.test/hello:1");
        assert_eq!(normalize("user/app"), "docker.io/user/app:latest");
        assert_eq!(normalize("localhost:5000/app"), "localhost:5000/app:latest");
        assert_eq!(
            normalize("registry.k8s.io/pause:3.10"),
            "registry.k8s.io/pause:3.10"
        );
        assert_eq!(
            normalize("docker.io/library/busybox:latest"),
            "docker.io/library/busybox:latest"
        );
        assert_eq!(normalize("ghcr.io/a/b@sha256:00"), "ghcr.io/a/b@sha256:00");
    }

    #[test]
    fn decompresses_gzip_and_zstd_archives() {
        let tar = b"pretend this is a tar".to_vec();
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        std::io::Write::write_all(&mut gz, &tar).unwrap();
        let gz = gz.finish().unwrap();
        assert_eq!(decompress("a.tar.gz", gz).unwrap(), tar);
        let zst = ruzstd::encoding::compress_to_vec(
            &tar[..],
            ruzstd::encoding::CompressionLevel::Fastest,
        );
        assert_eq!(decompress("a.tar.zst", zst).unwrap(), tar);
        assert_eq!(decompress("a.tar", tar.clone()).unwrap(), tar);
        assert!(decompress("a.tar.zst", b"nope".to_vec()).is_err());
    }

    #[test]
    fn chain_ids_follow_the_oci_rule() {
        let d = vec!["sha256:a".to_string(), "sha256:b".to_string()];
        let c = chain_ids(&d);
        assert_eq!(c[0], "sha256:a");
        assert_eq!(c[1], digest(b"sha256:a sha256:b"));
    }
}
