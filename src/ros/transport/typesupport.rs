//! Type supports found by name at run time, as rclcpp's generic publishers and
//! subscriptions find theirs: the package's prefix from the ament index of the sourced
//! environment (`AMENT_PREFIX_PATH`), its library `lib<pkg>__<typesupport>.so` under
//! `<prefix>/lib`, and in it the C function that hands out the type support of one
//! message or service. The rcl transport needs one for every topic and service, even for
//! serialized messages; with this, a type is usable as soon as its package is installed,
//! without rebuilding the agent.
//!
//! Libraries stay loaded for the life of the process: the handles they give out point
//! into them.

#![cfg_attr(not(feature = "rcl"), allow(dead_code))]
// Loading a library and calling its getters is only possible through the C interface.
#![allow(unsafe_code)]

use std::collections::HashMap;
use std::ffi::c_void;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use crate::ros::registry::TypeName;

/// The type support libraries a package installs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Flavor {
    /// `rosidl_typesupport_c`: the handle rcl takes, dispatching to the RMW's own.
    C,
    /// `rosidl_typesupport_introspection_c`: each message's C layout (size, init, fini).
    IntrospectionC,
}

impl Flavor {
    fn library_suffix(self) -> &'static str {
        match self {
            Flavor::C => "rosidl_typesupport_c",
            Flavor::IntrospectionC => "rosidl_typesupport_introspection_c",
        }
    }
}

/// What a handle is the type support of.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Handle {
    /// A message: `pkg/msg/Name`, or a part of a service or action such as
    /// `pkg/srv/Name_Request` or `pkg/action/Name_FeedbackMessage`.
    Message,
    /// A service: `pkg/srv/Name`, or an action's `pkg/action/Name_SendGoal`.
    Service,
}

/// The C function's name, e.g.
/// `rosidl_typesupport_c__get_message_type_support_handle__std_msgs__msg__String`.
pub fn symbol(flavor: Flavor, handle: Handle, ty: &TypeName) -> String {
    let what = match handle {
        Handle::Message => "message",
        Handle::Service => "service",
    };
    format!(
        "{}__get_{what}_type_support_handle__{}__{}__{}",
        flavor.library_suffix(),
        ty.package,
        ty.kind,
        ty.name
    )
}

/// The installation prefix of `package` in the ament index of `prefixes` (the entries of
/// `AMENT_PREFIX_PATH`, first wins), and the library of `flavor` under it.
pub fn library_path(
    prefixes: &str,
    package: &str,
    flavor: Flavor,
) -> Result<PathBuf, TypeSupportError> {
    let prefix = prefixes
        .split(':')
        .filter(|p| !p.is_empty())
        .map(Path::new)
        .find(|p| {
            p.join("share/ament_index/resource_index/packages")
                .join(package)
                .is_file()
        })
        .ok_or_else(|| TypeSupportError::NoPackage {
            package: package.to_owned(),
        })?;
    Ok(prefix
        .join("lib")
        .join(format!("lib{package}__{}.so", flavor.library_suffix())))
}

#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum TypeSupportError {
    #[error(
        "package {package} is not installed in the sourced ROS 2 environment \
         (AMENT_PREFIX_PATH): source the workspace that builds it"
    )]
    NoPackage { package: String },
    #[error("AMENT_PREFIX_PATH is not set: source the robot's ROS 2 environment first")]
    NoEnvironment,
    #[error("cannot load {path} (package {package}): {reason}")]
    Load {
        package: String,
        path: String,
        reason: String,
    },
    #[error("{type_name} is not in {path}: the package has no such {what}")]
    NoType {
        type_name: String,
        path: String,
        what: &'static str,
    },
}

/// A type support handle: a pointer into a loaded library, valid for the life of the
/// process and only read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TypeSupport(pub *const c_void);

// The handle points at constant data of a library that is never unloaded.
unsafe impl Send for TypeSupport {}
unsafe impl Sync for TypeSupport {}

/// The libraries loaded so far, by path, and the handles taken from them.
#[derive(Default)]
pub struct Loader {
    libraries: Mutex<HashMap<PathBuf, Arc<libloading::Library>>>,
    handles: Mutex<HashMap<String, TypeSupport>>,
}

impl Loader {
    /// The type support of `ty` in the flavor asked for, from the environment's
    /// `AMENT_PREFIX_PATH`.
    pub fn get(
        &self,
        flavor: Flavor,
        handle: Handle,
        ty: &TypeName,
    ) -> Result<TypeSupport, TypeSupportError> {
        let prefixes =
            std::env::var("AMENT_PREFIX_PATH").map_err(|_| TypeSupportError::NoEnvironment)?;
        self.get_from(&prefixes, flavor, handle, ty)
    }

    pub fn get_from(
        &self,
        prefixes: &str,
        flavor: Flavor,
        handle: Handle,
        ty: &TypeName,
    ) -> Result<TypeSupport, TypeSupportError> {
        let name = symbol(flavor, handle, ty);
        if let Some(h) = self.lock_handles().get(&name) {
            return Ok(*h);
        }
        let path = library_path(prefixes, &ty.package, flavor)?;
        let library = self.library(&path, &ty.package)?;
        let no_type = || TypeSupportError::NoType {
            type_name: ty.to_string(),
            path: path.display().to_string(),
            what: match handle {
                Handle::Message => "message",
                Handle::Service => "service",
            },
        };
        // SAFETY: every rosidl type support getter takes nothing and returns a pointer
        // to static data of its library.
        let handle = unsafe {
            let getter = library
                .get::<unsafe extern "C" fn() -> *const c_void>(name.as_bytes())
                .map_err(|_| no_type())?;
            getter()
        };
        if handle.is_null() {
            return Err(no_type());
        }
        let handle = TypeSupport(handle);
        self.lock_handles().insert(name, handle);
        Ok(handle)
    }

    fn library(
        &self,
        path: &Path,
        package: &str,
    ) -> Result<Arc<libloading::Library>, TypeSupportError> {
        let mut libraries = self.libraries.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(l) = libraries.get(path) {
            return Ok(l.clone());
        }
        // SAFETY: a type support library runs no code of its own when loaded beyond
        // the usual static initialisers of a ROS 2 library.
        let library =
            unsafe { libloading::Library::new(path) }.map_err(|e| TypeSupportError::Load {
                package: package.to_owned(),
                path: path.display().to_string(),
                reason: e.to_string(),
            })?;
        let library = Arc::new(library);
        libraries.insert(path.to_owned(), library.clone());
        Ok(library)
    }

    fn lock_handles(&self) -> std::sync::MutexGuard<'_, HashMap<String, TypeSupport>> {
        self.handles.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ty(text: &str) -> TypeName {
        TypeName::parse(text).unwrap()
    }

    /// An ament prefix with `packages` registered and nothing else.
    fn prefix(packages: &[&str]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        let index = dir.path().join("share/ament_index/resource_index/packages");
        std::fs::create_dir_all(&index).unwrap();
        for p in packages {
            std::fs::write(index.join(p), "").unwrap();
        }
        dir
    }

    #[test]
    fn symbols_are_named_as_rosidl_generates_them() {
        assert_eq!(
            symbol(Flavor::C, Handle::Message, &ty("std_msgs/msg/String")),
            "rosidl_typesupport_c__get_message_type_support_handle__std_msgs__msg__String"
        );
        assert_eq!(
            symbol(Flavor::C, Handle::Service, &ty("std_srvs/srv/SetBool")),
            "rosidl_typesupport_c__get_service_type_support_handle__std_srvs__srv__SetBool"
        );
        assert_eq!(
            symbol(
                Flavor::IntrospectionC,
                Handle::Message,
                &ty("std_srvs/srv/SetBool_Request")
            ),
            "rosidl_typesupport_introspection_c__get_message_type_support_handle__std_srvs__srv__SetBool_Request"
        );
    }

    #[test]
    fn the_first_prefix_that_indexes_the_package_is_used() {
        let (a, b) = (prefix(&["other"]), prefix(&["orchard_msgs"]));
        let c = prefix(&["orchard_msgs"]);
        let prefixes = format!(
            "{}:{}:{}",
            a.path().display(),
            b.path().display(),
            c.path().display()
        );
        let path = library_path(&prefixes, "orchard_msgs", Flavor::C).unwrap();
        assert_eq!(
            path,
            b.path()
                .join("lib/liborchard_msgs__rosidl_typesupport_c.so")
        );
        let err = library_path(&prefixes, "pick_msgs", Flavor::C).unwrap_err();
        assert_eq!(
            err,
            TypeSupportError::NoPackage {
                package: "pick_msgs".into()
            }
        );
        assert!(err.to_string().contains("pick_msgs"), "{err}");
    }

    #[test]
    fn a_missing_library_is_named_with_its_package_and_path() {
        let p = prefix(&["orchard_msgs"]);
        let loader = Loader::default();
        let err = loader
            .get_from(
                &p.path().display().to_string(),
                Flavor::C,
                Handle::Message,
                &ty("orchard_msgs/msg/Tree"),
            )
            .unwrap_err();
        let text = err.to_string();
        assert!(text.contains("orchard_msgs"), "{text}");
        assert!(
            text.contains("liborchard_msgs__rosidl_typesupport_c.so"),
            "{text}"
        );
        assert!(matches!(err, TypeSupportError::Load { .. }), "{err:?}");
    }

    /// A package's type support library, built by the C compiler: one message getter
    /// that returns the address of a static, and one that returns null.
    #[test]
    fn a_handle_is_taken_from_a_real_library_once_and_a_missing_type_is_named() {
        let p = prefix(&["orchard_msgs"]);
        let lib = p.path().join("lib");
        std::fs::create_dir_all(&lib).unwrap();
        let src = p.path().join("ts.c");
        std::fs::write(
            &src,
            "static const int tree = 7;\n\
             const void *rosidl_typesupport_c__get_message_type_support_handle__orchard_msgs__msg__Tree(void) { return &tree; }\n\
             const void *rosidl_typesupport_c__get_message_type_support_handle__orchard_msgs__msg__Null(void) { return 0; }\n",
        )
        .unwrap();
        let status = std::process::Command::new("cc")
            .args(["-shared", "-fPIC", "-o"])
            .arg(lib.join("liborchard_msgs__rosidl_typesupport_c.so"))
            .arg(&src)
            .status()
            .expect("this test builds a shared library with cc: apt-get install gcc");
        assert!(status.success());
        let prefixes = p.path().display().to_string();
        let loader = Loader::default();
        let get = |name: &str| loader.get_from(&prefixes, Flavor::C, Handle::Message, &ty(name));
        let tree = get("orchard_msgs/msg/Tree").unwrap();
        assert_eq!(unsafe { *(tree.0 as *const i32) }, 7);
        assert_eq!(get("orchard_msgs/msg/Tree").unwrap(), tree);
        for missing in ["orchard_msgs/msg/Leaf", "orchard_msgs/msg/Null"] {
            let err = get(missing).unwrap_err();
            assert!(matches!(err, TypeSupportError::NoType { .. }), "{err:?}");
            assert!(err.to_string().contains(missing), "{err}");
        }
    }
}
