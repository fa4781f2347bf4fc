//! Where message definitions come from, and the resolved schemas built from them.
//!
//! Sources are searched in the order they were added; the first definition of a type
//! wins. The agent adds, in order: every prefix of `AMENT_PREFIX_PATH` (the robot's own
//! ROS install and workspaces), the definitions bundled into the binary from
//! `interfaces/`, then folders named in configuration. Files are only indexed up front;
//! a definition is parsed the first time a type needs it.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

use super::msgdef::{
    self, ArrayKind, BaseType, DefinitionError, FieldDef, FieldType, MessageDef, Primitive, TypeRef,
};
use super::schema::{Elem, FieldSchema, MsgSchema, TypeSchema, MAX_DEPTH};

mod bundled {
    include!(concat!(env!("OUT_DIR"), "/bundled_interfaces.rs"));
}

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("'{0}' is not a type name: expected pkg/msg/Type (or pkg/Type, pkg/srv/Type_Request)")]
    BadName(String),
    #[error("unknown type '{name}'{used_by}: no definition found in {searched}")]
    Unknown {
        name: String,
        used_by: String,
        searched: String,
    },
    #[error(transparent)]
    Definition(#[from] DefinitionError),
    #[error("cannot read {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("type {0} contains itself, which CDR cannot represent")]
    Recursive(String),
    #[error("type {0} nests message types more than {MAX_DEPTH} levels deep")]
    TooDeep(String),
    #[error("'{0}' is a service; name one half: {0}_Request or {0}_Response")]
    IsService(String),
    #[error("'{0}' is an action; name one of its types, e.g. {0}_Goal or {0}_SendGoal_Request")]
    IsAction(String),
}

/// A normalized type name: `package`, `kind` ("msg" or "srv"), `name`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TypeName {
    pub package: String,
    pub kind: &'static str,
    pub name: String,
}

impl std::fmt::Display for TypeName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}/{}", self.package, self.kind, self.name)
    }
}

impl TypeName {
    /// Accepts `pkg/msg/Type`, `pkg/Type`, `pkg/srv/Type[_Request|_Response]` and the DDS
    /// spelling `pkg::msg::dds_::Type_`.
    pub fn parse(text: &str) -> Result<Self, RegistryError> {
        let bad = || RegistryError::BadName(text.to_owned());
        let (package, kind, name) = if text.contains("::") {
            let parts: Vec<&str> = text.split("::").collect();
            match parts.as_slice() {
                [p, k @ ("msg" | "srv" | "action"), "dds_", n] => {
                    (*p, *k, n.strip_suffix('_').ok_or_else(bad)?)
                }
                _ => return Err(bad()),
            }
        } else {
            let parts: Vec<&str> = text.split('/').collect();
            match parts.as_slice() {
                [p, n] => (*p, "msg", *n),
                [p, k @ ("msg" | "srv" | "action"), n] => (*p, *k, *n),
                _ => return Err(bad()),
            }
        };
        let kind = match kind {
            "srv" => "srv",
            "action" => "action",
            _ => "msg",
        };
        if !msgdef::is_package_name(package) {
            return Err(bad());
        }
        if kind == "action" {
            let base = msgdef::split_action_part(name).map_or(name, |(b, _)| b);
            if !msgdef::is_type_name(base) {
                return Err(bad());
            }
            return Ok(Self {
                package: package.to_owned(),
                kind,
                name: name.to_owned(),
            });
        }
        let check = name
            .strip_suffix("_Request")
            .or_else(|| name.strip_suffix("_Response"))
            .filter(|_| kind == "srv")
            .unwrap_or(name);
        if !msgdef::is_type_name(check) {
            return Err(bad());
        }
        Ok(Self {
            package: package.to_owned(),
            kind,
            name: name.to_owned(),
        })
    }

    fn key(&self) -> String {
        self.to_string()
    }

    /// For a service half, the key of its `.srv` file and whether it is the request.
    fn service_file(&self) -> Option<(String, bool)> {
        if self.kind != "srv" {
            return None;
        }
        if let Some(base) = self.name.strip_suffix("_Request") {
            Some((format!("{}/srv/{}", self.package, base), true))
        } else {
            self.name
                .strip_suffix("_Response")
                .map(|base| (format!("{}/srv/{}", self.package, base), false))
        }
    }

    /// The DDS type name ROS 2 uses on the wire: `pkg::msg::dds_::Type_`.
    pub fn dds_name(&self) -> String {
        format!("{}::{}::dds_::{}_", self.package, self.kind, self.name)
    }
}

#[derive(Debug, Clone)]
enum Source {
    File(PathBuf),
    Embedded { label: String, text: &'static str },
    Text { label: String, text: Arc<str> },
}

impl Source {
    fn label(&self) -> String {
        match self {
            Source::File(p) => p.display().to_string(),
            Source::Embedded { label, .. } | Source::Text { label, .. } => label.clone(),
        }
    }

    fn read(&self) -> Result<Arc<str>, RegistryError> {
        match self {
            Source::File(p) => {
                std::fs::read_to_string(p)
                    .map(Arc::from)
                    .map_err(|source| RegistryError::Io {
                        path: p.display().to_string(),
                        source,
                    })
            }
            Source::Embedded { text, .. } => Ok(Arc::from(*text)),
            Source::Text { text, .. } => Ok(text.clone()),
        }
    }
}

/// Message definitions by name, and the schemas resolved from them.
#[derive(Debug, Default)]
pub struct Registry {
    /// `pkg/msg/Type` or `pkg/srv/Type` -> where its text is.
    index: HashMap<String, Source>,
    searched: Vec<String>,
    defs: Mutex<HashMap<String, Arc<MessageDef>>>,
    schemas: Mutex<HashMap<String, Arc<MsgSchema>>>,
}

impl Registry {
    pub fn new() -> Self {
        Self::default()
    }

    /// `AMENT_PREFIX_PATH`, then the bundled definitions, then `extra_dirs`.
    pub fn standard(extra_dirs: &[PathBuf]) -> Result<Self, RegistryError> {
        let mut reg = Self::new();
        if let Some(paths) = std::env::var_os("AMENT_PREFIX_PATH") {
            for prefix in std::env::split_paths(&paths) {
                if !prefix.as_os_str().is_empty() {
                    reg.add_prefix(&prefix)?;
                }
            }
        }
        reg.add_bundled();
        for dir in extra_dirs {
            reg.add_dir(dir)?;
        }
        Ok(reg)
    }

    /// The definitions compiled into the binary from the project's `interfaces/` folder.
    pub fn add_bundled(&mut self) {
        for &(package, kind, name, text) in bundled::BUNDLED {
            let key = format!("{package}/{kind}/{name}");
            self.index.entry(key).or_insert_with(|| Source::Embedded {
                label: format!("(bundled) {package}/{kind}/{name}.{kind}"),
                text,
            });
        }
        self.searched.push("the bundled interfaces".into());
    }

    /// An install prefix: `<prefix>/share/<pkg>/{msg,srv}/`.
    pub fn add_prefix(&mut self, prefix: &Path) -> Result<(), RegistryError> {
        self.searched.push(format!("{}/share", prefix.display()));
        let share = prefix.join("share");
        let Ok(entries) = std::fs::read_dir(&share) else {
            return Ok(());
        };
        let mut packages: Vec<PathBuf> = entries.flatten().map(|e| e.path()).collect();
        packages.sort();
        for pkg_dir in packages {
            if let Some(pkg) = pkg_dir.file_name().and_then(|n| n.to_str()) {
                let pkg = pkg.to_owned();
                self.add_package(&pkg, &pkg_dir)?;
            }
        }
        Ok(())
    }

    /// A folder given by the user: a package (has `msg/` or `srv/`), a folder of
    /// packages, or an install prefix (has `share/`).
    pub fn add_dir(&mut self, dir: &Path) -> Result<(), RegistryError> {
        let meta = std::fs::metadata(dir).map_err(|source| RegistryError::Io {
            path: dir.display().to_string(),
            source,
        })?;
        if !meta.is_dir() {
            return Err(RegistryError::Io {
                path: dir.display().to_string(),
                source: std::io::Error::other("not a directory"),
            });
        }
        if dir.join("share").is_dir() {
            return self.add_prefix(dir);
        }
        self.searched.push(dir.display().to_string());
        if is_package_dir(dir) {
            let name = package_name(dir);
            return self.add_package(&name, dir);
        }
        let entries = std::fs::read_dir(dir).map_err(|source| RegistryError::Io {
            path: dir.display().to_string(),
            source,
        })?;
        let mut children: Vec<PathBuf> = entries.flatten().map(|e| e.path()).collect();
        children.sort();
        for child in children {
            if is_package_dir(&child) {
                let name = package_name(&child);
                self.add_package(&name, &child)?;
            }
        }
        Ok(())
    }

    fn add_package(&mut self, package: &str, dir: &Path) -> Result<(), RegistryError> {
        if !msgdef::is_package_name(package) {
            return Ok(());
        }
        for kind in ["msg", "srv", "action"] {
            let Ok(entries) = std::fs::read_dir(dir.join(kind)) else {
                continue;
            };
            for entry in entries.flatten() {
                let path = entry.path();
                if path.extension().and_then(|e| e.to_str()) != Some(kind) {
                    continue;
                }
                let Some(stem) = path.file_stem().and_then(|s| s.to_str()) else {
                    continue;
                };
                if !msgdef::is_type_name(stem) {
                    continue;
                }
                self.index
                    .entry(format!("{package}/{kind}/{stem}"))
                    .or_insert(Source::File(path));
            }
        }
        Ok(())
    }

    /// Adds one definition from text (`full_name` as `pkg/msg/Type` or `pkg/srv/Type`).
    /// Replaces an earlier definition of the same name.
    pub fn add_text(&mut self, full_name: &str, text: &str) -> Result<(), RegistryError> {
        let name = TypeName::parse(full_name)?;
        self.index.insert(
            name.key(),
            Source::Text {
                label: format!("{name}.{}", name.kind),
                text: Arc::from(text),
            },
        );
        lock(&self.defs).clear();
        lock(&self.schemas).clear();
        Ok(())
    }

    /// Every known message and service name, sorted.
    pub fn names(&self) -> Vec<String> {
        let set: BTreeSet<&String> = self.index.keys().collect();
        set.into_iter().cloned().collect()
    }

    pub fn contains(&self, name: &str) -> bool {
        TypeName::parse(name)
            .map(|t| match t.service_file() {
                Some((file, _)) => self.index.contains_key(&file),
                None => self.index.contains_key(&t.key()),
            })
            .unwrap_or(false)
    }

    /// Whether `name` is a whole service (`pkg/srv/Type`), whose halves are messages.
    pub fn is_service(&self, name: &str) -> bool {
        TypeName::parse(name)
            .map(|t| {
                t.kind == "srv" && t.service_file().is_none() && self.index.contains_key(&t.key())
            })
            .unwrap_or(false)
    }

    /// The parsed definition of a message (or service half).
    pub fn definition(&self, name: &str) -> Result<Arc<MessageDef>, RegistryError> {
        let t = TypeName::parse(name)?;
        self.definition_of(&t, "")
    }

    fn definition_of(&self, t: &TypeName, used_by: &str) -> Result<Arc<MessageDef>, RegistryError> {
        let key = t.key();
        if let Some(d) = lock(&self.defs).get(&key) {
            return Ok(d.clone());
        }
        if let Some((file_key, is_request)) = t.service_file() {
            let source = self
                .index
                .get(&file_key)
                .ok_or_else(|| self.unknown(t, used_by))?;
            let text = source.read()?;
            let base = &t.name[..t.name.rfind('_').unwrap_or(t.name.len())];
            let srv = msgdef::parse_service(&text, &t.package, base, &source.label())?;
            let (req, resp) = (Arc::new(srv.request), Arc::new(srv.response));
            let mut defs = lock(&self.defs);
            defs.insert(format!("{}/srv/{}_Request", t.package, base), req.clone());
            defs.insert(format!("{}/srv/{}_Response", t.package, base), resp.clone());
            return Ok(if is_request { req } else { resp });
        }
        if t.kind == "srv" {
            return Err(RegistryError::IsService(key));
        }
        if t.kind == "action" {
            return self.action_definition(t, used_by);
        }
        let source = self
            .index
            .get(&key)
            .ok_or_else(|| self.unknown(t, used_by))?;
        let text = source.read()?;
        let def = Arc::new(msgdef::parse_message(
            &text,
            &t.package,
            &t.name,
            &source.label(),
        )?);
        lock(&self.defs).insert(key, def.clone());
        Ok(def)
    }

    /// One of the types ROS 2 makes of an action: the three parts of its file, and the
    /// goal, result and feedback messages of its services and topic.
    fn action_definition(
        &self,
        t: &TypeName,
        used_by: &str,
    ) -> Result<Arc<MessageDef>, RegistryError> {
        let Some((base, _)) = msgdef::split_action_part(&t.name) else {
            return Err(RegistryError::IsAction(t.key()));
        };
        let file_key = format!("{}/action/{base}", t.package);
        let source = self
            .index
            .get(&file_key)
            .ok_or_else(|| self.unknown(t, used_by))?;
        let text = source.read()?;
        let action = msgdef::parse_action(&text, &t.package, base, &source.label())?;
        let pkg = t.package.as_str();
        let named = |field: &str, package: &str, name: &str| FieldDef {
            name: field.to_owned(),
            ty: FieldType {
                base: BaseType::Named(TypeRef {
                    package: package.to_owned(),
                    name: name.to_owned(),
                }),
                array: ArrayKind::Single,
            },
            default: None,
        };
        let prim = |field: &str, p: Primitive| FieldDef {
            name: field.to_owned(),
            ty: FieldType {
                base: BaseType::Primitive(p),
                array: ArrayKind::Single,
            },
            default: None,
        };
        let goal_id = || named("goal_id", "unique_identifier_msgs", "UUID");
        let made = |part: &str, fields: Vec<FieldDef>| MessageDef {
            package: pkg.to_owned(),
            name: format!("{base}_{part}"),
            fields,
            constants: Vec::new(),
        };
        let defs = [
            made(
                "SendGoal_Request",
                vec![goal_id(), named("goal", pkg, &format!("{base}_Goal"))],
            ),
            made(
                "SendGoal_Response",
                vec![
                    prim("accepted", Primitive::Bool),
                    named("stamp", "builtin_interfaces", "Time"),
                ],
            ),
            made("GetResult_Request", vec![goal_id()]),
            made(
                "GetResult_Response",
                vec![
                    prim("status", Primitive::Int8),
                    named("result", pkg, &format!("{base}_Result")),
                ],
            ),
            made(
                "FeedbackMessage",
                vec![
                    goal_id(),
                    named("feedback", pkg, &format!("{base}_Feedback")),
                ],
            ),
            action.goal,
            action.result,
            action.feedback,
        ];
        let mut out = None;
        let mut map = lock(&self.defs);
        for d in defs {
            let key = format!("{pkg}/action/{}", d.name);
            let d = Arc::new(d);
            if d.name == t.name {
                out = Some(d.clone());
            }
            map.insert(key, d);
        }
        out.ok_or_else(|| RegistryError::IsAction(t.key()))
    }

    fn unknown(&self, t: &TypeName, used_by: &str) -> RegistryError {
        let searched = if self.searched.is_empty() {
            "no definition folders".to_owned()
        } else {
            self.searched.join(", ")
        };
        RegistryError::Unknown {
            name: t.to_string(),
            used_by: used_by.to_owned(),
            searched,
        }
    }

    /// The resolved schema of a message type, with every nested type.
    pub fn schema(&self, name: &str) -> Result<Arc<MsgSchema>, RegistryError> {
        let t = TypeName::parse(name)?;
        let mut stack = Vec::new();
        self.schema_of(&t, "", &mut stack)
    }

    fn schema_of(
        &self,
        t: &TypeName,
        used_by: &str,
        stack: &mut Vec<String>,
    ) -> Result<Arc<MsgSchema>, RegistryError> {
        let key = t.key();
        if let Some(s) = lock(&self.schemas).get(&key) {
            return Ok(s.clone());
        }
        if stack.contains(&key) {
            return Err(RegistryError::Recursive(key));
        }
        if stack.len() >= MAX_DEPTH {
            return Err(RegistryError::TooDeep(stack[0].clone()));
        }
        let def = self.definition_of(t, used_by)?;
        stack.push(key.clone());
        let mut fields = Vec::with_capacity(def.fields.len());
        for f in &def.fields {
            let elem = match &f.ty.base {
                BaseType::Primitive(p) => Elem::Prim(*p),
                BaseType::String { wide, bound } => Elem::Str {
                    wide: *wide,
                    bound: *bound,
                },
                BaseType::Named(TypeRef { package, name }) => {
                    let nested = TypeName {
                        package: package.clone(),
                        kind: if msgdef::is_action_part(name) {
                            "action"
                        } else {
                            "msg"
                        },
                        name: name.clone(),
                    };
                    let used_by = format!(" (field '{}' of {key})", f.name);
                    Elem::Msg(self.schema_of(&nested, &used_by, stack)?)
                }
            };
            let ty = TypeSchema {
                elem,
                array: f.ty.array,
            };
            fields.push(FieldSchema::new(
                f.name.clone(),
                ty,
                f.ty.clone(),
                f.default.as_ref(),
            ));
        }
        stack.pop();
        let schema = Arc::new(MsgSchema::new(key.clone(), fields, def.constants.clone()));
        if schema.depth > MAX_DEPTH {
            return Err(RegistryError::TooDeep(key));
        }
        lock(&self.schemas).insert(key, schema.clone());
        Ok(schema)
    }

    /// The expanded text of a message, or of both halves of a service.
    pub fn show(&self, name: &str) -> Result<String, RegistryError> {
        if self.is_service(name) {
            let t = TypeName::parse(name)?;
            let base = t.to_string();
            let req = self.schema(&format!("{base}_Request"))?;
            let resp = self.schema(&format!("{base}_Response"))?;
            return Ok(format!(
                "{}---\n{}",
                req.expanded_definition(),
                resp.expanded_definition()
            ));
        }
        Ok(self.schema(name)?.expanded_definition())
    }
}

fn is_package_dir(dir: &Path) -> bool {
    dir.join("msg").is_dir() || dir.join("srv").is_dir() || dir.join("action").is_dir()
}

/// The package name from `package.xml`, else the folder name.
fn package_name(dir: &Path) -> String {
    if let Ok(xml) = std::fs::read_to_string(dir.join("package.xml")) {
        if let Some(start) = xml.find("<name>") {
            let rest = &xml[start + 6..];
            if let Some(end) = rest.find("</name>") {
                return rest[..end].trim().to_owned();
            }
        }
    }
    dir.file_name()
        .and_then(|n| n.to_str())
        .unwrap_or_default()
        .to_owned()
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn type_names_normalize() {
        let t = TypeName::parse("sensor_msgs/Image").unwrap();
        assert_eq!(t.to_string(), "sensor_msgs/msg/Image");
        assert_eq!(t.dds_name(), "sensor_msgs::msg::dds_::Image_");
        let t = TypeName::parse("std_msgs::msg::dds_::String_").unwrap();
        assert_eq!(t.to_string(), "std_msgs/msg/String");
        let t = TypeName::parse("std_srvs/srv/SetBool_Request").unwrap();
        assert_eq!(
            t.service_file(),
            Some(("std_srvs/srv/SetBool".into(), true))
        );
        for bad in [
            "",
            "Image",
            "a/b/c/d",
            "Sensor/Image",
            "pkg/lower",
            "pkg/msg/A_Request",
        ] {
            assert!(TypeName::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn bundled_types_resolve_with_nested_types() {
        let mut reg = Registry::new();
        reg.add_bundled();
        let s = reg.schema("sensor_msgs/msg/NavSatFix").unwrap();
        assert_eq!(s.fields[0].name, "header");
        let text = reg.show("sensor_msgs/NavSatFix").unwrap();
        assert!(
            text.contains("\tbuiltin_interfaces/Time stamp\n\t\tint32 sec\n"),
            "{text}"
        );
        assert!(text.contains("float64[9] position_covariance"));
        let srv = reg.show("std_srvs/srv/SetBool").unwrap();
        assert_eq!(srv, "bool data\n---\nbool success\nstring message\n");
        assert!(reg.is_service("std_srvs/srv/SetBool"));
        assert!(reg.contains("std_srvs/srv/SetBool_Response"));
    }

    #[test]
    fn unknown_nested_type_names_the_field() {
        let mut reg = Registry::new();
        reg.add_text("demo_msgs/msg/A", "demo_msgs/Missing m\n")
            .unwrap();
        let err = reg.schema("demo_msgs/A").unwrap_err().to_string();
        assert!(
            err.contains("unknown type 'demo_msgs/msg/Missing' (field 'm' of demo_msgs/msg/A)"),
            "{err}"
        );
    }

    #[test]
    fn recursion_is_refused() {
        let mut reg = Registry::new();
        reg.add_text("demo_msgs/msg/A", "B[] children\n").unwrap();
        reg.add_text("demo_msgs/msg/B", "A[] parents\n").unwrap();
        let err = reg.schema("demo_msgs/A").unwrap_err();
        assert!(matches!(err, RegistryError::Recursive(_)), "{err}");
    }

    #[test]
    fn deep_nesting_is_bounded() {
        let mut reg = Registry::new();
        for i in 0..80 {
            let text = if i == 79 {
                "int8 x\n".to_owned()
            } else {
                format!("L{} next\n", i + 1)
            };
            reg.add_text(&format!("deep_msgs/msg/L{i}"), &text).unwrap();
        }
        let err = reg.schema("deep_msgs/L0").unwrap_err();
        assert!(matches!(err, RegistryError::TooDeep(_)), "{err}");
        assert!(reg.schema("deep_msgs/L20").is_ok());
    }

    #[test]
    fn folders_of_packages_are_indexed() {
        let dir = tempfile::tempdir().unwrap();
        let pkg = dir.path().join("robot_msgs");
        std::fs::create_dir_all(pkg.join("msg")).unwrap();
        std::fs::write(pkg.join("msg/Arm.msg"), "float64[6] joints\n").unwrap();
        let mut reg = Registry::new();
        reg.add_dir(dir.path()).unwrap();
        assert!(reg.contains("robot_msgs/Arm"));
        let prefix = dir.path().join("install");
        std::fs::create_dir_all(prefix.join("share/arm_msgs/srv")).unwrap();
        std::fs::write(prefix.join("share/arm_msgs/srv/Home.srv"), "---\nbool ok\n").unwrap();
        reg.add_dir(&prefix).unwrap();
        assert!(reg.contains("arm_msgs/srv/Home_Response"));
    }

    #[test]
    fn an_action_gives_the_types_ros_2_makes_of_it() {
        let fixtures = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/interfaces");
        let reg = Registry::standard(&[fixtures]).unwrap();
        let t = TypeName::parse("orchard_test_srvs/action/PickApple_SendGoal_Request").unwrap();
        assert_eq!(
            t.dds_name(),
            "orchard_test_srvs::action::dds_::PickApple_SendGoal_Request_"
        );
        let names = |ty: &str| -> Vec<String> {
            reg.schema(ty)
                .unwrap()
                .fields
                .iter()
                .map(|f| f.name.clone())
                .collect()
        };
        let a = "orchard_test_srvs/action/PickApple";
        assert_eq!(names(&format!("{a}_Goal")), ["target", "grip_force"]);
        assert_eq!(names(&format!("{a}_Result")), ["picked", "log"]);
        assert_eq!(names(&format!("{a}_Feedback")), ["progress", "stage"]);
        assert_eq!(names(&format!("{a}_SendGoal_Request")), ["goal_id", "goal"]);
        assert_eq!(
            names(&format!("{a}_SendGoal_Response")),
            ["accepted", "stamp"]
        );
        assert_eq!(names(&format!("{a}_GetResult_Request")), ["goal_id"]);
        assert_eq!(
            names(&format!("{a}_GetResult_Response")),
            ["status", "result"]
        );
        assert_eq!(
            names(&format!("{a}_FeedbackMessage")),
            ["goal_id", "feedback"]
        );
        // Nested: the goal inside the request, the UUID's 16 bytes.
        let s = reg.schema(&format!("{a}_SendGoal_Request")).unwrap();
        let Elem::Msg(goal) = &s.fields[1].ty.elem else {
            panic!("goal is not a message")
        };
        assert_eq!(goal.fields[1].name, "grip_force");
        let Elem::Msg(uuid) = &s.fields[0].ty.elem else {
            panic!("goal_id is not a message")
        };
        assert_eq!(uuid.fields[0].ty.array, ArrayKind::Fixed(16));
        assert!(matches!(reg.schema(a), Err(RegistryError::IsAction(_))));
        assert!(reg.schema("action_msgs/srv/CancelGoal_Request").is_ok());
    }

    #[test]
    fn a_broken_action_file_is_refused_with_its_place() {
        let e = msgdef::parse_action("int32 a\n---\nint32 b\n", "p", "A", "p/action/A.action")
            .unwrap_err();
        assert!(e.message.contains("two '---'"), "{e}");
        let e = msgdef::parse_action("---\n---\n---\n", "p", "A", "p/action/A.action").unwrap_err();
        assert_eq!(e.line, 3, "{e}");
    }
}
