//! Partial decoding of the objects in a review: only the fields policies read are built into
//! the JSON tree; everything else (managedFields, env, probes, volumes, status...) is skipped
//! by the parser without allocating. A generic tree of an 11 KB Deployment costs about 70 us;
//! this costs a tenth of that (see docs/benchmarks.md).
//!
//! A field kept here that has the wrong JSON type is kept whole, so that the policies still
//! report the shape error with its path.

use std::borrow::Cow;
use std::cell::Cell;
use std::collections::BTreeMap;
use std::fmt;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::core::{DynamicObject, ObjectMeta, TypeMeta};
use serde::de::{DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;
use serde_json::{Map, Value};

/// Which parts of a JSON value to keep.
#[derive(Debug, Clone, Copy)]
pub enum Shape {
    /// The whole value.
    All,
    /// Only these fields of an object.
    Fields(&'static [(&'static str, Shape)]),
    /// Every element of an array, each with this shape.
    Each(&'static Shape),
    /// A list of `{name, value}` entries (a container's `env`): only the entries whose name is
    /// listed are kept, as `{name, value}`; the others are skipped without allocating.
    Named(&'static [&'static str]),
}

use Shape::{All, Each, Fields, Named};

const CONTAINER: Shape = Fields(&[
    ("name", All),
    ("image", All),
    ("imagePullPolicy", All),
    // opensearch-cluster: discovery.type (the other variables, often dozens, are skipped).
    ("env", Named(NAMED_ENTRIES)),
]);
const CONTAINERS: Shape = Each(&CONTAINER);
const POD_SPEC: Shape = Fields(&[
    ("containers", CONTAINERS),
    ("initContainers", CONTAINERS),
    ("ephemeralContainers", CONTAINERS),
    // node-spread.
    ("affinity", Fields(&[("podAntiAffinity", All)])),
    ("topologySpreadConstraints", All),
]);
const TEMPLATE: Shape = Fields(&[("spec", POD_SPEC)]);
const SPEC: Shape = Fields(&[
    ("replicas", All),
    ("minReplicas", All),
    ("scaleTargetRef", All),
    ("selector", All),
    ("template", TEMPLATE),
    (
        "jobTemplate",
        Fields(&[("spec", Fields(&[("template", TEMPLATE)]))]),
    ),
    // A Pod's spec is its pod spec.
    ("containers", CONTAINERS),
    ("initContainers", CONTAINERS),
    ("ephemeralContainers", CONTAINERS),
]);
/// What the policies read of an object in a review, besides its metadata (see [`Metadata`]),
/// as a shape (the tests prune whole objects with it).
#[cfg(test)]
const OBJECT: Shape = Fields(OBJECT_FIELDS);
/// What the policies read of an object in a review, besides its metadata (see [`Metadata`]).
const OBJECT_FIELDS: &[(&str, Shape)] = &[
    ("apiVersion", All),
    ("kind", All),
    ("spec", SPEC),
    // PodTemplate.
    ("template", TEMPLATE),
    // EphemeralContainers (Kubernetes 1.20-1.22).
    ("ephemeralContainers", CONTAINERS),
    // Roles and bindings (rbac-hygiene).
    ("rules", All),
    ("roleRef", All),
    ("subjects", All),
];

/// The most memory that decoding one object in a review may build, by the estimate of
/// [`keep`]. A real object builds a few kilobytes (a ClusterRole of 300 rules, about 300 KiB);
/// the bound keeps a hostile one (100,000 containers, or a kept list of millions of `{}`) from
/// costing 20 to 80 times its JSON.
pub const MAX_KEPT_BYTES: usize = 4 * 1024 * 1024;

/// The estimated cost of one JSON value in the tree (`serde_json::Value` is 32 bytes).
const VALUE: usize = 32;
/// The estimated cost of a JSON object's map: a B-tree leaf of 11 `String` keys and `Value`s.
const MAP: usize = 640;

thread_local! {
    /// Bytes kept so far of the object being decoded (decoding is synchronous, so one object's
    /// count never mixes with another's on the same thread).
    static KEPT: Cell<usize> = const { Cell::new(0) };
    /// Bytes kept since [`take_kept`] was last called, all objects together.
    static KEPT_TOTAL: Cell<usize> = const { Cell::new(0) };
}

/// Counts `bytes` more of the object being decoded, or fails once it exceeds
/// [`MAX_KEPT_BYTES`].
fn keep<E: serde::de::Error>(bytes: usize) -> Result<(), E> {
    KEPT_TOTAL.with(|total| total.set(total.get().saturating_add(bytes)));
    KEPT.with(|kept| {
        let n = kept.get().saturating_add(bytes);
        kept.set(n);
        if n > MAX_KEPT_BYTES {
            Err(E::custom(format_args!(
                "the object builds more than {} MiB in the fields prodguard reads (containers, rules, labels...); prodguard judges no object that large",
                MAX_KEPT_BYTES >> 20
            )))
        } else {
            Ok(())
        }
    })
}

/// The estimated bytes decoding has built on this thread since the last call (both objects of
/// a review, and any attempt that failed), and starts counting again.
pub fn take_kept() -> usize {
    KEPT_TOTAL.with(|total| total.replace(0))
}

/// Deserializes a value keeping only `Shape`.
#[derive(Clone, Copy)]
pub struct Filtered(pub Shape, pub NamedLists);

/// Whether `Named` lists are read at all. A body that cannot name any listed entry (see
/// [`may_name_entries`]) skips them whole, which is much cheaper than looking at each entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NamedLists {
    Read,
    Skipped,
}

/// The entry names `Named` shapes look for.
const NAMED_ENTRIES: &[&str] = &["discovery.type"];

/// Whether a review body may hold one of the entries `Named` shapes keep: it contains the name
/// verbatim, or a `\u` escape that could spell it (the API server writes names verbatim).
pub fn may_name_entries(body: &[u8]) -> bool {
    memchr::memmem::find(body, b"\\u").is_some()
        || NAMED_ENTRIES
            .iter()
            .any(|name| memchr::memmem::find(body, name.as_bytes()).is_some())
}

impl<'de> DeserializeSeed<'de> for Filtered {
    type Value = Value;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Value, D::Error> {
        deserializer.deserialize_any(FilterVisitor(self.0, self.1))
    }
}

struct FilterVisitor(Shape, NamedLists);

/// A map key, borrowed from the input when it needs no unescaping.
struct Key<'de>(Cow<'de, str>);

impl<'de> Deserialize<'de> for Key<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct KeyVisitor;
        impl<'de> Visitor<'de> for KeyVisitor {
            type Value = Key<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string key")
            }
            fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Borrowed(v)))
            }
            fn visit_str<E>(self, v: &str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Owned(v.to_owned())))
            }
            fn visit_string<E>(self, v: String) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Owned(v)))
            }
        }
        deserializer.deserialize_str(KeyVisitor)
    }
}

impl<'de> Visitor<'de> for FilterVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        keep(VALUE + MAP)?;
        let mut out = Map::new();
        while let Some(Key(key)) = map.next_key::<Key<'de>>()? {
            let child = match self.0 {
                Fields(fields) => field_shape(fields, &key, self.1),
                // An object where an array belongs: kept whole, for the shape error.
                All | Each(_) | Named(_) => Some(All),
            };
            keep_entry(&mut map, &mut out, key, child, self.1)?;
        }
        Ok(Value::Object(out))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        keep(VALUE)?;
        let element = match self.0 {
            Each(shape) => *shape,
            Named(names) => {
                let mut out = Vec::new();
                while let Some(entry) = seq.next_element_seed(NamedEntry(names))? {
                    out.extend(entry);
                }
                return Ok(Value::Array(out));
            }
            // An array where an object belongs: kept whole, for the shape error.
            All | Fields(_) => All,
        };
        let mut out = Vec::new();
        while let Some(value) = seq.next_element_seed(Filtered(element, self.1))? {
            // The vector's spare capacity.
            keep(VALUE)?;
            out.push(value);
        }
        Ok(Value::Array(out))
    }

    fn visit_bool<E: serde::de::Error>(self, v: bool) -> Result<Value, E> {
        keep(VALUE)?;
        Ok(Value::Bool(v))
    }
    fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Value, E> {
        keep(VALUE)?;
        Ok(Value::from(v))
    }
    fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Value, E> {
        keep(VALUE)?;
        Ok(Value::from(v))
    }
    fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<Value, E> {
        keep(VALUE)?;
        Ok(Value::from(v))
    }
    fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Value, E> {
        keep(VALUE + v.len())?;
        Ok(Value::String(v.to_owned()))
    }
    fn visit_string<E: serde::de::Error>(self, v: String) -> Result<Value, E> {
        keep(VALUE + v.len())?;
        Ok(Value::String(v))
    }
    fn visit_unit<E: serde::de::Error>(self) -> Result<Value, E> {
        keep(VALUE)?;
        Ok(Value::Null)
    }
    fn visit_none<E: serde::de::Error>(self) -> Result<Value, E> {
        keep(VALUE)?;
        Ok(Value::Null)
    }
}

/// The shape `fields` keep for `key`, if any (a `Named` list only when they are read).
fn field_shape(fields: &[(&str, Shape)], key: &str, named: NamedLists) -> Option<Shape> {
    fields
        .iter()
        .find(|(name, _)| *name == key)
        .map(|(_, shape)| *shape)
        .filter(|shape| !(matches!(shape, Named(_)) && named == NamedLists::Skipped))
}

/// Reads the value of the map entry `key` into `out` with `shape`, or skips it unparsed.
fn keep_entry<'de, A: MapAccess<'de>>(
    map: &mut A,
    out: &mut Map<String, Value>,
    key: Cow<'de, str>,
    shape: Option<Shape>,
    named: NamedLists,
) -> Result<(), A::Error> {
    match shape {
        Some(shape) => {
            keep(key.len())?;
            let value = map.next_value_seed(Filtered(shape, named))?;
            out.insert(key.into_owned(), value);
        }
        None => {
            map.next_value::<IgnoredAny>()?;
        }
    }
    Ok(())
}

/// One entry of a `Named` list: `Some({name, value})` when its name is listed.
#[derive(Clone, Copy)]
struct NamedEntry(&'static [&'static str]);

impl<'de> DeserializeSeed<'de> for NamedEntry {
    type Value = Option<Value>;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Option<Value>, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for NamedEntry {
    type Value = Option<Value>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a named entry")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Option<Value>, A::Error> {
        let (mut name, mut value) = (None, None);
        while let Some(Key(key)) = map.next_key::<Key<'de>>()? {
            match key.as_ref() {
                "name" => name = map.next_value::<MaybeStr<'de>>()?.0,
                "value" => value = map.next_value::<MaybeStr<'de>>()?.0,
                _ => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        let Some(name) = name.filter(|n| self.0.contains(&n.as_ref())) else {
            return Ok(None);
        };
        keep(VALUE + MAP + name.len() + value.as_ref().map_or(0, |v| v.len()))?;
        let mut entry = Map::new();
        entry.insert("name".into(), Value::String(name.into_owned()));
        if let Some(value) = value {
            entry.insert("value".into(), Value::String(value.into_owned()));
        }
        Ok(Some(Value::Object(entry)))
    }

    // An entry that is not an object names nothing.
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Option<Value>, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(None)
    }
    fn visit_bool<E>(self, _: bool) -> Result<Option<Value>, E> {
        Ok(None)
    }
    fn visit_i64<E>(self, _: i64) -> Result<Option<Value>, E> {
        Ok(None)
    }
    fn visit_u64<E>(self, _: u64) -> Result<Option<Value>, E> {
        Ok(None)
    }
    fn visit_f64<E>(self, _: f64) -> Result<Option<Value>, E> {
        Ok(None)
    }
    fn visit_str<E>(self, _: &str) -> Result<Option<Value>, E> {
        Ok(None)
    }
    fn visit_unit<E>(self) -> Result<Option<Value>, E> {
        Ok(None)
    }
    fn visit_none<E>(self) -> Result<Option<Value>, E> {
        Ok(None)
    }
}

/// A string, borrowed from the input when it can be; `None` for any other value.
struct MaybeStr<'de>(Option<Cow<'de, str>>);

impl<'de> Deserialize<'de> for MaybeStr<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct StrVisitor;
        impl<'de> Visitor<'de> for StrVisitor {
            type Value = MaybeStr<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E>(self, v: &'de str) -> Result<MaybeStr<'de>, E> {
                Ok(MaybeStr(Some(Cow::Borrowed(v))))
            }
            fn visit_str<E>(self, v: &str) -> Result<MaybeStr<'de>, E> {
                Ok(MaybeStr(Some(Cow::Owned(v.to_owned()))))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<MaybeStr<'de>, A::Error> {
                while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
                Ok(MaybeStr(None))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<MaybeStr<'de>, A::Error> {
                while seq.next_element::<IgnoredAny>()?.is_some() {}
                Ok(MaybeStr(None))
            }
            fn visit_bool<E>(self, _: bool) -> Result<MaybeStr<'de>, E> {
                Ok(MaybeStr(None))
            }
            fn visit_i64<E>(self, _: i64) -> Result<MaybeStr<'de>, E> {
                Ok(MaybeStr(None))
            }
            fn visit_u64<E>(self, _: u64) -> Result<MaybeStr<'de>, E> {
                Ok(MaybeStr(None))
            }
            fn visit_f64<E>(self, _: f64) -> Result<MaybeStr<'de>, E> {
                Ok(MaybeStr(None))
            }
            fn visit_unit<E>(self) -> Result<MaybeStr<'de>, E> {
                Ok(MaybeStr(None))
            }
            fn visit_none<E>(self) -> Result<MaybeStr<'de>, E> {
                Ok(MaybeStr(None))
            }
        }
        deserializer.deserialize_any(StrVisitor)
    }
}

/// An object of a review, decoded partially (see [`OBJECT`]), as a `DynamicObject`.
#[derive(Debug, Clone, PartialEq)]
pub struct ReviewObject(pub DynamicObject);

impl<'de> Deserialize<'de> for ReviewObject {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        ReviewObject::decode(deserializer, NamedLists::Read)
    }
}

/// A [`ReviewObject`] decoded with `Named` lists skipped, for bodies that cannot name their
/// entries.
#[derive(Debug, Clone, PartialEq)]
pub struct LeanReviewObject(pub ReviewObject);

impl<'de> Deserialize<'de> for LeanReviewObject {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        ReviewObject::decode(deserializer, NamedLists::Skipped).map(LeanReviewObject)
    }
}

impl ReviewObject {
    fn decode<'de, D: Deserializer<'de>>(
        deserializer: D,
        named: NamedLists,
    ) -> Result<ReviewObject, D::Error> {
        deserializer.deserialize_map(ObjectVisitor(named))
    }
}

/// The metadata fields policies read, decoded straight into `ObjectMeta`'s types (no JSON
/// tree in between). `managedFields` and every annotation but the one a policy reads are
/// skipped.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Metadata {
    name: Option<String>,
    generate_name: Option<String>,
    namespace: Option<String>,
    uid: Option<String>,
    #[serde(default, deserialize_with = "counted_labels")]
    labels: Option<BTreeMap<String, String>>,
    #[serde(default, deserialize_with = "counted_owners")]
    owner_references: Option<Vec<OwnerReference>>,
    annotations: Option<KeptAnnotations>,
}

/// Labels, each counted against [`MAX_KEPT_BYTES`].
fn counted_labels<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<BTreeMap<String, String>>, D::Error> {
    struct LabelsVisitor;
    impl<'de> Visitor<'de> for LabelsVisitor {
        type Value = Option<BTreeMap<String, String>>;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("a map of labels")
        }
        fn visit_unit<E>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
            let mut labels = BTreeMap::new();
            while let Some((key, value)) = map.next_entry::<String, String>()? {
                // Two strings in a B-tree leaf, and their text.
                keep(96 + key.len() + value.len())?;
                labels.insert(key, value);
            }
            Ok(Some(labels))
        }
    }
    deserializer.deserialize_any(LabelsVisitor)
}

/// Owner references, each counted against [`MAX_KEPT_BYTES`].
fn counted_owners<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<Vec<OwnerReference>>, D::Error> {
    struct OwnersVisitor;
    impl<'de> Visitor<'de> for OwnersVisitor {
        type Value = Option<Vec<OwnerReference>>;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("a list of owner references")
        }
        fn visit_unit<E>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
            let mut owners = Vec::new();
            while let Some(owner) = seq.next_element::<OwnerReference>()? {
                keep(
                    std::mem::size_of::<OwnerReference>()
                        + owner.api_version.len()
                        + owner.kind.len()
                        + owner.name.len()
                        + owner.uid.len(),
                )?;
                owners.push(owner);
            }
            Ok(Some(owners))
        }
    }
    deserializer.deserialize_any(OwnersVisitor)
}

/// ingress-body-size reads one annotation; the others (last-applied-configuration) are
/// skipped.
const KEPT_ANNOTATIONS: &[&str] = &["nginx.ingress.kubernetes.io/proxy-body-size"];

struct KeptAnnotations(BTreeMap<String, String>);

impl<'de> Deserialize<'de> for KeptAnnotations {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct AnnotationsVisitor;
        impl<'de> Visitor<'de> for AnnotationsVisitor {
            type Value = KeptAnnotations;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a map of annotations")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<KeptAnnotations, A::Error> {
                let mut kept = BTreeMap::new();
                while let Some(Key(key)) = map.next_key::<Key<'de>>()? {
                    if KEPT_ANNOTATIONS.contains(&key.as_ref()) {
                        kept.insert(key.into_owned(), map.next_value::<String>()?);
                    } else {
                        map.next_value::<IgnoredAny>()?;
                    }
                }
                Ok(KeptAnnotations(kept))
            }
        }
        deserializer.deserialize_map(AnnotationsVisitor)
    }
}

impl From<Metadata> for ObjectMeta {
    fn from(m: Metadata) -> ObjectMeta {
        ObjectMeta {
            name: m.name,
            generate_name: m.generate_name,
            namespace: m.namespace,
            uid: m.uid,
            labels: m.labels,
            owner_references: m.owner_references,
            annotations: m.annotations.map(|a| a.0),
            ..ObjectMeta::default()
        }
    }
}

/// The object itself: metadata through [`Metadata`], the rest through [`OBJECT`], assembled
/// as `DynamicObject` splits an object (`apiVersion` and `kind` into its type when both are
/// strings).
struct ObjectVisitor(NamedLists);

impl<'de> Visitor<'de> for ObjectVisitor {
    type Value = ReviewObject;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<ReviewObject, A::Error> {
        KEPT.with(|kept| kept.set(0));
        let mut metadata = None;
        let mut data = Map::new();
        while let Some(Key(key)) = map.next_key::<Key<'de>>()? {
            if key == "metadata" {
                metadata = Some(map.next_value::<Metadata>()?);
                continue;
            }
            let shape = field_shape(OBJECT_FIELDS, &key, self.0);
            keep_entry(&mut map, &mut data, key, shape, self.0)?;
        }
        let types = match (data.remove("apiVersion"), data.remove("kind")) {
            (Some(Value::String(api_version)), Some(Value::String(kind))) => {
                Some(TypeMeta { api_version, kind })
            }
            (api_version, kind) => {
                // Not both strings: leave them in the data, as DynamicObject would.
                if let Some(v) = api_version {
                    data.insert("apiVersion".into(), v);
                }
                if let Some(k) = kind {
                    data.insert("kind".into(), k);
                }
                None
            }
        };
        Ok(ReviewObject(DynamicObject {
            types,
            metadata: metadata.map(ObjectMeta::from).unwrap_or_default(),
            data: Value::Object(data),
        }))
    }
}

impl serde::Serialize for ReviewObject {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.0.serialize(serializer)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// Decodes `value` as a review's object: the error, and the bytes kept.
    fn kept_of(value: &Value) -> (Option<String>, usize) {
        let text = serde_json::to_string(value).unwrap();
        take_kept();
        let result = serde_json::from_str::<ReviewObject>(&text);
        (result.err().map(|e| e.to_string()), take_kept())
    }

    #[test]
    fn what_an_object_builds_is_bounded_whatever_its_shape() {
        let refused = "the object builds more than 4 MiB in the fields prodguard reads";
        // 100,000 containers (2.6 MB of JSON).
        let containers = vec![json!({"name": "c", "image": "a"}); 100_000];
        let (error, kept) = kept_of(&json!({"kind": "Pod", "spec": {"containers": containers}}));
        assert!(error.unwrap().contains(refused));
        assert!(kept <= MAX_KEPT_BYTES + 1024, "{kept}");
        // A kept list of empty objects (3 bytes of JSON each), and a million labels.
        let rules = vec![json!({}); 1_000_000];
        let (error, _) = kept_of(&json!({"kind": "ClusterRole", "rules": rules}));
        assert!(error.unwrap().contains(refused));
        let labels: serde_json::Map<String, Value> =
            (0..1_000_000).map(|i| (i.to_string(), json!(""))).collect();
        let (error, _) = kept_of(&json!({"kind": "Pod", "metadata": {"labels": labels}}));
        assert!(error.unwrap().contains(refused));
        // A real object is far below: a Deployment of 50 containers, a ClusterRole of 300 rules.
        let containers = vec![
            json!({"name": "app", "image": "registry.local/app:1.2.3", "imagePullPolicy": "IfNotPresent"});
            50
        ];
        let (error, kept) = kept_of(
            &json!({"kind": "Deployment", "metadata": {"name": "web", "labels": {"app": "web"}},
            "spec": {"replicas": 2, "template": {"spec": {"containers": containers}}}}),
        );
        assert_eq!(error, None);
        assert!(kept < 128 * 1024, "{kept}");
        let rules = vec![
            json!({"apiGroups": [""], "resources": ["pods", "pods/log"], "verbs": ["get", "list", "watch"]});
            300
        ];
        let (error, kept) = kept_of(&json!({"kind": "ClusterRole", "rules": rules}));
        assert_eq!(error, None);
        assert!(kept < 1024 * 1024, "{kept}");
    }

    fn filter(value: &Value) -> Value {
        let text = serde_json::to_string(value).unwrap();
        let mut de = serde_json::Deserializer::from_str(&text);
        Filtered(OBJECT, NamedLists::Read)
            .deserialize(&mut de)
            .unwrap()
    }

    #[test]
    fn keeps_what_policies_read_and_drops_the_rest() {
        let deployment = json!({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "web", "namespace": "openg2p", "uid": "u", "labels": {"a": "b"},
                         "annotations": {"big": "x"}, "managedFields": [{"manager": "helm"}],
                         "ownerReferences": [{"apiVersion": "v1", "kind": "X", "name": "x", "uid": "y", "controller": true}]},
            "spec": {"replicas": 1, "selector": {"matchLabels": {"a": "b"}},
                     "template": {"metadata": {"labels": {"a": "b"}}, "spec": {
                         "initContainers": [{"name": "i", "image": "busybox", "env": [{"name": "A", "value": "1"}]}],
                         "containers": [{"name": "c", "image": "nginx", "imagePullPolicy": "Always", "ports": [{"containerPort": 80}]}],
                         "volumes": [{"name": "v"}]}}},
            "status": {"replicas": 1}
        });
        let object: ReviewObject = serde_json::from_value(deployment).unwrap();
        assert_eq!(
            serde_json::to_value(&object).unwrap(),
            json!({
                "apiVersion": "apps/v1", "kind": "Deployment",
                "metadata": {"name": "web", "namespace": "openg2p", "uid": "u", "labels": {"a": "b"},
                             "annotations": {},
                             "ownerReferences": [{"apiVersion": "v1", "kind": "X", "name": "x", "uid": "y", "controller": true}]},
                "spec": {"replicas": 1, "selector": {"matchLabels": {"a": "b"}}, "template": {"spec": {
                    "initContainers": [{"name": "i", "image": "busybox", "env": []}],
                    "containers": [{"name": "c", "image": "nginx", "imagePullPolicy": "Always"}]}}}
            })
        );
    }

    #[test]
    fn every_pod_bearing_shape_is_kept() {
        let containers = json!([{"name": "c", "image": "nginx", "args": ["x"]}]);
        let kept = json!([{"name": "c", "image": "nginx"}]);
        let cronjob = json!({"spec": {"schedule": "* * * * *", "jobTemplate": {"spec": {"template": {"spec": {"containers": containers}}}}}});
        assert_eq!(
            filter(&cronjob),
            json!({"spec": {"jobTemplate": {"spec": {"template": {"spec": {"containers": kept}}}}}})
        );
        let pod = json!({"spec": {"containers": containers, "ephemeralContainers": containers, "nodeName": "n"}});
        assert_eq!(
            filter(&pod),
            json!({"spec": {"containers": kept, "ephemeralContainers": kept}})
        );
        let template = json!({"template": {"spec": {"containers": containers}}});
        assert_eq!(
            filter(&template),
            json!({"template": {"spec": {"containers": kept}}})
        );
        let old_style = json!({"ephemeralContainers": containers});
        assert_eq!(filter(&old_style), json!({"ephemeralContainers": kept}));
        let hpa = json!({"spec": {"minReplicas": 2, "maxReplicas": 5, "scaleTargetRef": {"kind": "Deployment", "name": "web"}}});
        assert_eq!(
            filter(&hpa),
            json!({"spec": {"minReplicas": 2, "scaleTargetRef": {"kind": "Deployment", "name": "web"}}})
        );
    }

    #[test]
    fn wrong_shapes_are_kept_whole_for_the_error() {
        let wrong =
            json!({"spec": {"template": {"spec": {"containers": {"name": "oops", "image": "x"}}}}});
        assert_eq!(filter(&wrong), wrong);
        let wrong = json!({"spec": {"containers": ["x", 5]}});
        assert_eq!(filter(&wrong), wrong);
        let wrong = json!({"spec": "not an object"});
        assert_eq!(filter(&wrong), wrong);
    }

    #[test]
    fn the_object_is_split_as_dynamic_object_splits_it() {
        let text = r#"{"apiVersion":"apps/v1","kind":"Deployment","metadata":{"name":"web","labels":{"a":"b"}},"spec":{"replicas":2}}"#;
        let fast: ReviewObject = serde_json::from_str(text).unwrap();
        let full: DynamicObject = serde_json::from_str(text).unwrap();
        assert_eq!(fast.0, full);
        let partial = r#"{"kind":"Pod","spec":{}}"#;
        let fast: ReviewObject = serde_json::from_str(partial).unwrap();
        assert_eq!(fast.0.types, None);
        assert_eq!(fast.0.data["kind"], "Pod");
    }

    #[test]
    fn metadata_keeps_what_policies_read_and_checks_its_types() {
        let text = r#"{"kind":"Ingress","metadata":{"name":"i","generateName":"g-","annotations":{"nginx.ingress.kubernetes.io/proxy-body-size":"8m","last-applied":{"not":"a string"}},"managedFields":[{"manager":"helm"}],"finalizers":["x"]}}"#;
        let object: ReviewObject = serde_json::from_str(text).unwrap();
        let meta = &object.0.metadata;
        assert_eq!(meta.name.as_deref(), Some("i"));
        assert_eq!(meta.generate_name.as_deref(), Some("g-"));
        assert_eq!(
            meta.annotations,
            Some(BTreeMap::from([(
                "nginx.ingress.kubernetes.io/proxy-body-size".to_owned(),
                "8m".to_owned()
            )]))
        );
        assert_eq!(meta.managed_fields, None);
        assert_eq!(meta.finalizers, None);
        // The kept fields have the types ObjectMeta gives them.
        for wrong in [
            r#"{"metadata":{"labels":{"a":1}}}"#,
            r#"{"metadata":{"name":["x"]}}"#,
            r#"{"metadata":{"annotations":{"nginx.ingress.kubernetes.io/proxy-body-size":5}}}"#,
            r#"{"metadata":{"ownerReferences":[{"kind":7}]}}"#,
            r#"{"metadata":"not an object"}"#,
            r#""not an object""#,
        ] {
            assert!(
                serde_json::from_str::<ReviewObject>(wrong).is_err(),
                "{wrong}"
            );
        }
    }

    #[test]
    fn escaped_keys_are_matched() {
        let text = r#"{"kind":"Pod","spec":{"cont\u0061iners":[{"name":"c","image":"nginx"}]}}"#;
        let object: ReviewObject = serde_json::from_str(text).unwrap();
        assert_eq!(object.0.data["spec"]["containers"][0]["image"], "nginx");
    }

    #[test]
    fn only_listed_env_variables_are_kept() {
        let pod = json!({"spec": {"containers": [{"name": "c", "image": "x", "env": [
            {"name": "A", "value": "1"},
            {"name": "discovery.type", "value": "single-node"},
            {"name": "B", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}},
            {"name": "discovery.type"},
            "not an entry", 5, null, ["x"],
            {"name": 7, "value": "v"}
        ]}]}});
        assert_eq!(
            filter(&pod)["spec"]["containers"][0]["env"],
            json!([{"name": "discovery.type", "value": "single-node"}, {"name": "discovery.type"}])
        );
        let escaped = r#"{"spec": {"containers": [{"env": [{"name": "discovery\u002etype", "value": "single\u002dnode"}]}]}}"#;
        let mut de = serde_json::Deserializer::from_str(escaped);
        assert_eq!(
            Filtered(OBJECT, NamedLists::Read)
                .deserialize(&mut de)
                .unwrap()["spec"]["containers"][0]["env"],
            json!([{"name": "discovery.type", "value": "single-node"}])
        );
        // Not a list: kept whole for the shape error.
        let wrong = json!({"spec": {"containers": [{"env": {"discovery.type": "single-node"}}]}});
        assert_eq!(
            filter(&wrong)["spec"]["containers"][0]["env"],
            json!({"discovery.type": "single-node"})
        );
    }

    /// Every policy decides the same on the partial object as on the whole one.
    #[test]
    fn policies_decide_alike_on_partial_and_whole_objects() {
        use std::collections::BTreeMap;

        use crate::cluster::NoLookup;
        use crate::config::Config;
        use crate::engine::{Context, Engine, Operation, Request, Webhook};
        use crate::report::NoReporter;

        let engine = Engine::new(
            &Config::default(),
            std::sync::Arc::new(NoLookup {
                reason: "test".into(),
            }),
            std::sync::Arc::new(NoReporter),
        );
        let context = || Context {
            namespace_labels: Some(Ok(BTreeMap::from([(
                "prodguard.io/environment".to_owned(),
                "production".to_owned(),
            )]))),
            role_rules: Some(Ok(Some(
                serde_json::from_value(
                    json!([{"apiGroups": [""], "resources": ["secrets"], "verbs": ["get"]}]),
                )
                .unwrap(),
            ))),
            ..Context::default()
        };
        let noise = json!({"last-applied": "x".repeat(100)});
        let objects = [
            (
                "apps",
                "Deployment",
                json!({"apiVersion": "apps/v1", "kind": "Deployment",
                "metadata": {"name": "search", "annotations": noise},
                "spec": {"replicas": 3, "selector": {"matchLabels": {"app": "s"}},
                    "template": {"metadata": {"labels": {"app": "s"}}, "spec": {
                        "affinity": {"nodeAffinity": {"x": 1}},
                        "topologySpreadConstraints": [{"maxSkew": 1, "topologyKey": "zone", "whenUnsatisfiable": "DoNotSchedule"}],
                        "containers": [{"name": "os", "image": "opensearchproject/opensearch:2", "ports": [],
                            "env": [{"name": "discovery.type", "value": "single-node"}, {"name": "X", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}}]}]}}}}),
            ),
            (
                "apps",
                "StatefulSet",
                json!({"apiVersion": "apps/v1", "kind": "StatefulSet",
                "metadata": {"name": "db"},
                "spec": {"replicas": 2, "selector": {"matchLabels": {"app": "db"}},
                    "template": {"spec": {
                        "affinity": {"podAntiAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [{"weight": 1, "podAffinityTerm": {"topologyKey": "kubernetes.io/hostname"}}]}},
                        "containers": [{"name": "pg", "image": "bitnami/postgresql:16"}]}}}}),
            ),
            (
                "networking.k8s.io",
                "Ingress",
                json!({"apiVersion": "networking.k8s.io/v1", "kind": "Ingress",
                "metadata": {"name": "i", "annotations": {"nginx.ingress.kubernetes.io/proxy-body-size": "0", "other": "y"}}, "spec": {"rules": []}}),
            ),
            (
                "networking.k8s.io",
                "Ingress",
                json!({"apiVersion": "networking.k8s.io/v1", "kind": "Ingress",
                "metadata": {"name": "j", "annotations": {"other": "y"}}, "spec": {}}),
            ),
            (
                "rbac.authorization.k8s.io",
                "RoleBinding",
                json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
                "metadata": {"name": "b"}, "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "r"},
                "subjects": [{"kind": "User", "name": "bob"}]}),
            ),
        ];
        for (group, kind, whole) in objects {
            let full: DynamicObject = serde_json::from_value(whole.clone()).unwrap();
            let text = serde_json::to_string(&whole).unwrap();
            let partial: ReviewObject = serde_json::from_str(&text).unwrap();
            let mut acted = false;
            for webhook in [Webhook::Mutate, Webhook::Validate] {
                let decide = |object: &DynamicObject| {
                    let request = Request {
                        uid: "u",
                        operation: Operation::Create,
                        group,
                        version: "v1",
                        kind,
                        resource: "x",
                        resource_group: group,
                        resource_version: "v1",
                        sub_resource: None,
                        namespace: "openg2p",
                        name: "",
                        username: "bob",
                        groups: &[],
                        object: Some(object),
                        old_object: None,
                        dry_run: false,
                    };
                    engine.evaluate(webhook, &request, &context())
                };
                let (a, b) = (decide(&full), decide(&partial.0));
                assert_eq!(a, b, "{kind} {webhook:?}");
                let crate::engine::Verdict::Decided(d) = a else {
                    panic!("{kind}")
                };
                acted |= !d.reports.is_empty();
            }
            assert!(acted, "{kind} is a case a policy acts on");
        }
    }
}
