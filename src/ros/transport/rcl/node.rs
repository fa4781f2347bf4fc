//! rcl's C objects: the context and node, the thread that waits on them, and the
//! subscriptions, publishers, services and clients created on the node. Every object
//! keeps the node alive (an `Arc`) and is finalised before it; the node is finalised, and
//! rcl shut down, when the last of them is gone.

use std::collections::HashMap;
use std::ffi::{c_void, CStr, CString};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use r2r_rcl as sys;
use tokio::sync::mpsc;

use super::{apply_qos, MessageType, ServiceType};
use crate::ros::transport::{Qos, Sample, ServeFn};

/// rcl's last error on this thread, as text, and cleared.
fn rcl_error(what: &str, ret: i32) -> String {
    // SAFETY: rcutils keeps the error state per thread; reading and resetting it is the
    // documented way to consume it.
    let text = unsafe {
        let e = sys::rcutils_get_error_string();
        let text = CStr::from_ptr(e.str_.as_ptr())
            .to_string_lossy()
            .into_owned();
        sys::rcutils_reset_error();
        text
    };
    if text.is_empty() {
        format!("{what} failed (rcl error {ret})")
    } else {
        format!("{what} failed: {text}")
    }
}

fn check(ret: sys::rcl_ret_t, what: &str) -> Result<(), String> {
    if ret == sys::RCL_RET_OK as sys::rcl_ret_t {
        Ok(())
    } else {
        Err(rcl_error(what, ret))
    }
}

fn c_string(what: &str, text: &str) -> Result<CString, String> {
    CString::new(text).map_err(|_| format!("{what} '{text}' contains a NUL byte"))
}

fn allocator() -> sys::rcutils_allocator_t {
    // SAFETY: returns a value.
    unsafe { sys::rcutils_get_default_allocator() }
}

/// What the wait thread has not taken into its wait set yet.
#[derive(Default)]
struct Incoming {
    subscriptions: Vec<Subscription>,
    services: Vec<Service>,
    clients: Vec<Arc<Client>>,
}

/// The context, the node and the guard condition that wakes the wait thread.
pub(crate) struct Node {
    context: *mut sys::rcl_context_t,
    node: *mut sys::rcl_node_t,
    guard: *mut sys::rcl_guard_condition_t,
    /// Which of the three were initialised (a failed start finalises only those).
    ready: [bool; 3],
    incoming: Mutex<Incoming>,
    stop: AtomicBool,
    stopped: Mutex<Option<String>>,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
    runtime: tokio::runtime::Handle,
    /// Cancelled when the node stops: ends the subscriptions' tasks.
    closing: tokio_util::sync::CancellationToken,
}

// rcl's objects are used from several threads only where rcl allows it: creating and
// finalising entities on the node, publishing, sending requests and replies; the wait
// set belongs to the wait thread alone.
unsafe impl Send for Node {}
unsafe impl Sync for Node {}

impl Drop for Node {
    fn drop(&mut self) {
        // SAFETY: every entity holds the node and is gone; each object is finalised once,
        // only if it was initialised, and freed as the box it was made from.
        unsafe {
            if self.ready[2] {
                sys::rcl_guard_condition_fini(self.guard);
            }
            if self.ready[1] {
                sys::rcl_node_fini(self.node);
            }
            if self.ready[0] {
                sys::rcl_shutdown(self.context);
                sys::rcl_context_fini(self.context);
            }
            drop(Box::from_raw(self.guard));
            drop(Box::from_raw(self.node));
            drop(Box::from_raw(self.context));
        }
    }
}

impl Node {
    /// Initialises rcl with this process's command line (its `--ros-args`), creates the
    /// node and starts the wait thread. Requests are handled on `runtime`.
    pub(crate) fn start(
        name: &str,
        namespace: &str,
        runtime: tokio::runtime::Handle,
    ) -> Result<Arc<Self>, String> {
        let c_name = c_string("The node name", name)?;
        let c_namespace = c_string("The namespace", namespace)?;
        let args: Vec<CString> = std::env::args_os()
            .filter_map(|a| CString::new(a.into_encoded_bytes()).ok())
            .collect();
        let argv: Vec<*const std::os::raw::c_char> = args.iter().map(|a| a.as_ptr()).collect();
        // SAFETY: zero-initialised objects, as rcl wants them before init.
        let mut node = unsafe {
            Self {
                context: Box::into_raw(Box::new(sys::rcl_get_zero_initialized_context())),
                node: Box::into_raw(Box::new(sys::rcl_get_zero_initialized_node())),
                guard: Box::into_raw(Box::new(sys::rcl_get_zero_initialized_guard_condition())),
                ready: [false; 3],
                incoming: Mutex::default(),
                stop: AtomicBool::new(false),
                stopped: Mutex::new(None),
                thread: Mutex::new(None),
                runtime,
                closing: tokio_util::sync::CancellationToken::new(),
            }
        };
        // SAFETY: the calls follow rcl's documented order; the strings and argv outlive
        // them (rcl copies what it keeps).
        unsafe {
            let mut init = sys::rcl_get_zero_initialized_init_options();
            check(
                sys::rcl_init_options_init(&mut init, allocator()),
                "rcl_init_options_init",
            )?;
            let ret = sys::rcl_init(
                argv.len() as std::os::raw::c_int,
                argv.as_ptr(),
                &init,
                node.context,
            );
            sys::rcl_init_options_fini(&mut init);
            check(ret, "rcl_init")?;
            node.ready[0] = true;
            let options = sys::rcl_node_get_default_options();
            check(
                sys::rcl_node_init(
                    node.node,
                    c_name.as_ptr(),
                    c_namespace.as_ptr(),
                    node.context,
                    &options,
                ),
                "creating the node",
            )?;
            node.ready[1] = true;
            check(
                sys::rcl_guard_condition_init(
                    node.guard,
                    node.context,
                    sys::rcl_guard_condition_get_default_options(),
                ),
                "creating a guard condition",
            )?;
            node.ready[2] = true;
        }
        let node = Arc::new(node);
        let waiter = node.clone();
        let thread = std::thread::Builder::new()
            .name("rcl-wait".into())
            .spawn(move || wait_loop(&waiter))
            .map_err(|e| format!("cannot start the rcl thread: {e}"))?;
        *node.thread.lock().unwrap_or_else(|p| p.into_inner()) = Some(thread);
        Ok(node)
    }

    pub(crate) fn fully_qualified_name(&self) -> String {
        // SAFETY: the node is valid; rcl returns a string it owns.
        unsafe {
            let p = sys::rcl_node_get_fully_qualified_name(self.node);
            if p.is_null() {
                return String::new();
            }
            CStr::from_ptr(p).to_string_lossy().into_owned()
        }
    }

    /// Stops the wait thread; entities it holds are finalised.
    pub(crate) fn stop(&self) {
        self.stop.store(true, Ordering::SeqCst);
        self.closing.cancel();
        self.wake();
        let thread = self.thread.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(t) = thread {
            if t.thread().id() != std::thread::current().id() {
                let _ = t.join();
            }
        }
    }

    pub(crate) fn stopped(&self) -> Option<String> {
        self.stopped
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn wake(&self) {
        // SAFETY: triggering a guard condition is thread-safe.
        unsafe {
            sys::rcl_trigger_guard_condition(self.guard);
        }
    }

    fn incoming(&self) -> std::sync::MutexGuard<'_, Incoming> {
        self.incoming.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Starts taking `s`'s messages: on a task woken by the RMW when one arrives (one
    /// thread hop fewer than through the wait thread), or, where the RMW has no such
    /// callback, through the wait thread.
    pub(crate) fn add_subscription(&self, mut s: Subscription) {
        let wake = Arc::new(tokio::sync::Notify::new());
        // SAFETY: the callback only notifies; `wake` is kept by the subscription, which
        // removes the callback before it is finalised and before `wake` is dropped.
        let ret = unsafe {
            sys::rcl_subscription_set_on_new_message_callback(
                &*s.handle,
                Some(on_new_message),
                Arc::as_ptr(&wake).cast::<c_void>(),
            )
        };
        if ret == sys::RCL_RET_OK as sys::rcl_ret_t {
            s.wake = Some(wake);
            self.runtime.spawn(pump(s, self.closing.clone()));
            return;
        }
        let why = rcl_error("setting a message callback", ret);
        tracing::debug!(topic = %s.topic, "{why}; the wait thread takes its messages");
        self.incoming().subscriptions.push(s);
        self.wake();
    }

    pub(crate) fn add_service(&self, s: Service) {
        self.incoming().services.push(s);
        self.wake();
    }

    pub(crate) fn subscription(
        self: &Arc<Self>,
        topic: &str,
        ty: MessageType,
        qos: Qos,
        sink: mpsc::Sender<Sample>,
    ) -> Result<Subscription, String> {
        let c_topic = c_string("The topic", topic)?;
        // SAFETY: a zero-initialised subscription, initialised on the valid node with a
        // type support of a loaded library; finalised by Subscription's drop.
        unsafe {
            let mut handle = Box::new(sys::rcl_get_zero_initialized_subscription());
            let mut options = sys::rcl_subscription_get_default_options();
            apply_qos(&mut options.qos, qos);
            check(
                sys::rcl_subscription_init(
                    &mut *handle,
                    self.node,
                    ty.ts,
                    c_topic.as_ptr(),
                    &options,
                ),
                "rcl_subscription_init",
            )?;
            Ok(Subscription {
                node: self.clone(),
                handle,
                topic: topic.to_owned(),
                sink,
                pending: None,
                closed: false,
                take_errors: 0,
                last_seq: HashMap::new(),
                wake: None,
                depth: qos.depth,
            })
        }
    }

    pub(crate) fn publisher(
        self: &Arc<Self>,
        topic: &str,
        ty: MessageType,
        qos: Qos,
    ) -> Result<Publisher, String> {
        let c_topic = c_string("The topic", topic)?;
        // SAFETY: as for subscriptions.
        unsafe {
            let mut handle = Box::new(sys::rcl_get_zero_initialized_publisher());
            let mut options = sys::rcl_publisher_get_default_options();
            apply_qos(&mut options.qos, qos);
            check(
                sys::rcl_publisher_init(&mut *handle, self.node, ty.ts, c_topic.as_ptr(), &options),
                "rcl_publisher_init",
            )?;
            Ok(Publisher {
                node: self.clone(),
                handle,
            })
        }
    }

    pub(crate) fn service(
        self: &Arc<Self>,
        name: &str,
        ty: ServiceType,
        handler: ServeFn,
    ) -> Result<Service, String> {
        let c_name = c_string("The service name", name)?;
        // SAFETY: as for subscriptions.
        unsafe {
            let mut handle = Box::new(sys::rcl_get_zero_initialized_service());
            let options = sys::rcl_service_get_default_options();
            check(
                sys::rcl_service_init(&mut *handle, self.node, ty.ts, c_name.as_ptr(), &options),
                "rcl_service_init",
            )?;
            Ok(Service(Arc::new(ServiceShared {
                node: self.clone(),
                handle,
                name: name.to_owned(),
                ty,
                handler,
                send: Mutex::new(()),
            })))
        }
    }

    pub(crate) fn client(
        self: &Arc<Self>,
        name: &str,
        ty: ServiceType,
    ) -> Result<Arc<Client>, String> {
        let c_name = c_string("The service name", name)?;
        // SAFETY: as for subscriptions.
        let client = unsafe {
            let mut handle = Box::new(sys::rcl_get_zero_initialized_client());
            let options = sys::rcl_client_get_default_options();
            check(
                sys::rcl_client_init(&mut *handle, self.node, ty.ts, c_name.as_ptr(), &options),
                "rcl_client_init",
            )?;
            Arc::new(Client {
                node: self.clone(),
                handle,
                ty,
                waiting: Mutex::new(HashMap::new()),
            })
        };
        self.incoming().clients.push(client.clone());
        self.wake();
        Ok(client)
    }

    /// The QoS of every publisher of `topic` on the graph.
    pub(crate) fn publishers_qos(
        &self,
        topic: &str,
    ) -> Result<Vec<sys::rmw_qos_profile_t>, String> {
        let c_topic = c_string("The topic", topic)?;
        // SAFETY: the array is zero-initialised, filled by rcl and finalised with the
        // allocator that filled it.
        unsafe {
            let mut alloc = allocator();
            let mut infos = sys::rmw_get_zero_initialized_topic_endpoint_info_array();
            check(
                sys::rcl_get_publishers_info_by_topic(
                    self.node,
                    &mut alloc,
                    c_topic.as_ptr(),
                    false,
                    &mut infos,
                ),
                "rcl_get_publishers_info_by_topic",
            )?;
            let list = if infos.info_array.is_null() {
                Vec::new()
            } else {
                std::slice::from_raw_parts(infos.info_array, infos.size)
                    .iter()
                    .map(|i| i.qos_profile)
                    .collect()
            };
            sys::rmw_topic_endpoint_info_array_fini(&mut infos, &mut alloc);
            Ok(list)
        }
    }
}

/// A subscription and where its samples go.
pub(crate) struct Subscription {
    node: Arc<Node>,
    handle: Box<sys::rcl_subscription_t>,
    topic: String,
    sink: mpsc::Sender<Sample>,
    /// A sample taken while the channel was full: the subscription waits for room.
    pending: Option<Sample>,
    /// The receiving side is gone: nothing more is taken.
    closed: bool,
    take_errors: u64,
    /// The last sequence number taken from each publisher (by its gid), where the RMW
    /// hands them out.
    last_seq: HashMap<[u8; GID_SIZE], u64>,
    /// What the RMW's new-message callback notifies, when one is set.
    wake: Option<Arc<tokio::sync::Notify>>,
    /// The history depth the RMW keeps for this subscription.
    depth: usize,
}

unsafe impl Send for Subscription {}

impl Drop for Subscription {
    fn drop(&mut self) {
        // SAFETY: initialised on this node, finalised once; the callback is removed
        // first, so the RMW no longer uses `wake` (dropped after this).
        unsafe {
            if self.wake.is_some() {
                sys::rcl_subscription_set_on_new_message_callback(
                    &*self.handle,
                    None,
                    std::ptr::null(),
                );
            }
            sys::rcl_subscription_fini(&mut *self.handle, self.node.node);
        }
    }
}

/// The bytes of a publisher's gid.
const GID_SIZE: usize = sys::RMW_GID_STORAGE_SIZE as usize;

/// Called by the RMW (on its own thread) when messages arrive for a subscription.
unsafe extern "C" fn on_new_message(user_data: *const c_void, _count: usize) {
    // SAFETY: `user_data` is the subscription's `Notify`, alive while the callback is set.
    if let Some(wake) = unsafe { user_data.cast::<tokio::sync::Notify>().as_ref() } {
        wake.notify_one();
    }
}

/// A buffer for serialized messages, grown by the RMW as needed.
struct Buffer(sys::rcl_serialized_message_t);

// The buffer is plain memory owned by this value.
unsafe impl Send for Buffer {}

impl Buffer {
    fn new() -> Result<Self, String> {
        // SAFETY: an empty array with the default allocator.
        unsafe {
            let mut b = sys::rcutils_get_zero_initialized_uint8_array();
            let alloc = allocator();
            check(
                sys::rcutils_uint8_array_init(&mut b, 0, &alloc),
                "allocating a buffer",
            )?;
            Ok(Self(b))
        }
    }
}

impl Drop for Buffer {
    fn drop(&mut self) {
        // SAFETY: initialised in new, finalised once.
        unsafe {
            sys::rcutils_uint8_array_fini(&mut self.0);
        }
    }
}

/// At most this many messages are taken in one go, once there is room for all of them.
const BATCH: usize = 64;
/// While messages come at [`BUSY_RATE`] or faster, they are taken this often, in
/// batches, instead of at each arrival (each wake-up costs more than the messages it
/// hands on).
const COALESCE: Duration = Duration::from_millis(1);
/// Messages per second from which a subscription counts as busy, measured over
/// [`RATE_WINDOW`].
const BUSY_RATE: u32 = 4000;
const RATE_WINDOW: Duration = Duration::from_millis(20);
/// Batches are taken only where the RMW's history holds this many: a shallow one could
/// overflow in between.
const COALESCE_DEPTH: usize = 100;

/// Moves a subscription's messages to its channel, each when there is room for it: what
/// the channel cannot take stays in the RMW's history, whose depth decides what is kept.
/// A full channel is filled again only once it has room for a batch, so that a consumer
/// that lags does not wake this task for every message. A message is taken as soon as
/// it arrives, unless the subscription is busy and its history deep: then every
/// [`COALESCE`].
async fn pump(mut sub: Subscription, closing: tokio_util::sync::CancellationToken) {
    let Some(wake) = sub.wake.clone() else {
        return;
    };
    let mut buffer = match Buffer::new() {
        Ok(b) => b,
        Err(e) => {
            tracing::error!(topic = %sub.topic, "{e}. Nothing is taken from this topic.");
            return;
        }
    };
    let sink = sub.sink.clone();
    let batch = BATCH.min(sink.max_capacity());
    let may_coalesce = sub.depth >= COALESCE_DEPTH;
    let (mut window, mut in_window, mut busy) = (std::time::Instant::now(), 0u32, false);
    loop {
        let permits = tokio::select! {
            p = sink.reserve_many(batch) => match p {
                Ok(p) => p,
                Err(_) => return,
            },
            _ = closing.cancelled() => return,
        };
        let mut taken = 0u32;
        let mut drained = false;
        for permit in permits {
            match sub.take_one(&mut buffer.0) {
                Some(sample) => {
                    permit.send(sample);
                    taken += 1;
                }
                None => {
                    drained = true;
                    break;
                }
            }
        }
        in_window += taken;
        let elapsed = window.elapsed();
        if elapsed >= RATE_WINDOW {
            busy = f64::from(in_window) >= f64::from(BUSY_RATE) * elapsed.as_secs_f64();
            (window, in_window) = (std::time::Instant::now(), 0);
        }
        if !drained {
            continue;
        }
        if may_coalesce && busy && taken > 0 {
            tokio::select! {
                _ = tokio::time::sleep(COALESCE) => {}
                _ = closing.cancelled() => return,
            }
        } else {
            tokio::select! {
                _ = wake.notified() => {}
                _ = closing.cancelled() => return,
            }
        }
    }
}

/// How many messages of one publisher went missing between the sequence number taken
/// before (`last`, none for a publisher not seen yet) and `seq`.
fn missing(last: Option<u64>, seq: u64) -> u64 {
    match last {
        Some(l) if seq > l => seq - l - 1,
        _ => 0,
    }
}

/// RMWs that hand out no sequence numbers (rmw_cyclonedds in Humble) say so with this.
const SEQUENCE_UNSUPPORTED: u64 = u64::MAX;

impl Subscription {
    /// Messages of this sample's publisher that were dropped before it (the middleware's
    /// history overflowed), from the gap in the publisher's sequence numbers.
    fn gap(&mut self, info: &sys::rmw_message_info_t) -> u64 {
        let seq = info.publication_sequence_number;
        if seq == SEQUENCE_UNSUPPORTED || seq == 0 {
            return 0;
        }
        if self.last_seq.len() > 1024 {
            // Publishers come and go: forget them all now and then (the next message of
            // each is then counted from).
            self.last_seq.clear();
        }
        let last = self.last_seq.insert(info.publisher_gid.data, seq);
        missing(last, seq)
    }

    /// Offers the sample that waited for room; whether the subscription may take more.
    fn offer_pending(&mut self) -> bool {
        if let Some(sample) = self.pending.take() {
            match self.sink.try_send(sample) {
                Ok(()) => {}
                Err(mpsc::error::TrySendError::Full(s)) => self.pending = Some(s),
                Err(mpsc::error::TrySendError::Closed(_)) => self.closed = true,
            }
        }
        self.pending.is_none() && !self.closed
    }

    /// Takes one message, if the middleware holds one.
    fn take_one(&mut self, buffer: &mut sys::rcl_serialized_message_t) -> Option<Sample> {
        // SAFETY: the buffer was initialised with the default allocator, and rmw grows
        // it as needed; the message info is a plain value.
        let (ret, info) = unsafe {
            let mut info = sys::rmw_get_zero_initialized_message_info();
            let ret = sys::rcl_take_serialized_message(
                &*self.handle,
                buffer,
                &mut info,
                std::ptr::null_mut(),
            );
            (ret, info)
        };
        if ret == sys::RCL_RET_SUBSCRIPTION_TAKE_FAILED as sys::rcl_ret_t {
            return None;
        }
        if ret != sys::RCL_RET_OK as sys::rcl_ret_t {
            // A publisher that leaves can make one take fail (its disposal has no data):
            // nothing is lost, so it is not an error of the agent's.
            self.take_errors += 1;
            let why = rcl_error("taking a message", ret);
            tracing::debug!(topic = %self.topic, count = self.take_errors, "{why}");
            return None;
        }
        // SAFETY: rmw wrote buffer_length bytes at buffer.
        let cdr = unsafe {
            Bytes::copy_from_slice(std::slice::from_raw_parts(
                buffer.buffer,
                buffer.buffer_length,
            ))
        };
        let stamp = info.source_timestamp;
        Some(Sample {
            cdr,
            source_time_ns: (stamp > 0).then_some(stamp),
            lost_before: self.gap(&info),
        })
    }

    /// Takes what the middleware holds, until it is empty or the channel is full.
    fn take(&mut self, buffer: &mut sys::rcl_serialized_message_t) {
        while let Some(sample) = self.take_one(buffer) {
            match self.sink.try_send(sample) {
                Ok(()) => {}
                Err(mpsc::error::TrySendError::Full(s)) => {
                    self.pending = Some(s);
                    return;
                }
                Err(mpsc::error::TrySendError::Closed(_)) => {
                    self.closed = true;
                    return;
                }
            }
        }
    }
}

/// A publisher of serialized messages.
pub(crate) struct Publisher {
    node: Arc<Node>,
    handle: Box<sys::rcl_publisher_t>,
}

// Publishing is thread-safe in rcl.
unsafe impl Send for Publisher {}
unsafe impl Sync for Publisher {}

impl Drop for Publisher {
    fn drop(&mut self) {
        // SAFETY: initialised on this node, finalised once.
        unsafe {
            sys::rcl_publisher_fini(&mut *self.handle, self.node.node);
        }
    }
}

impl Publisher {
    pub(crate) fn publish(&self, cdr: &[u8]) -> Result<(), String> {
        // SAFETY: rcl only reads the borrowed buffer during the call.
        unsafe {
            let message = sys::rcl_serialized_message_t {
                buffer: cdr.as_ptr() as *mut u8,
                buffer_length: cdr.len(),
                buffer_capacity: cdr.len(),
                allocator: allocator(),
            };
            check(
                sys::rcl_publish_serialized_message(&*self.handle, &message, std::ptr::null_mut()),
                "publishing",
            )
        }
    }

    /// Waits until every matched reliable reader has acknowledged what was published
    /// (where the RMW can tell; else at once).
    pub(crate) fn wait_acknowledged(&self, timeout: Duration) -> bool {
        let ns = i64::try_from(timeout.as_nanos()).unwrap_or(i64::MAX);
        // SAFETY: a valid publisher; rcl blocks this thread at most `timeout`.
        let ret = unsafe { sys::rcl_publisher_wait_for_all_acked(&*self.handle, ns) };
        if ret == sys::RCL_RET_OK as sys::rcl_ret_t {
            return true;
        }
        let _ = rcl_error("waiting for acknowledgements", ret);
        ret == sys::RCL_RET_UNSUPPORTED as sys::rcl_ret_t
    }

    pub(crate) fn subscription_count(&self) -> usize {
        let mut n = 0usize;
        // SAFETY: a valid publisher and a plain out value.
        let ret = unsafe { sys::rcl_publisher_get_subscription_count(&*self.handle, &mut n) };
        if ret == sys::RCL_RET_OK as sys::rcl_ret_t {
            n
        } else {
            let _ = rcl_error("counting subscriptions", ret);
            0
        }
    }
}

/// One message in its C layout, created by its introspection type support and
/// finalised when dropped.
struct CMessage {
    ty: MessageType,
    ptr: *mut u8,
    layout: std::alloc::Layout,
}

// The struct is plain memory owned by this value.
unsafe impl Send for CMessage {}

impl CMessage {
    fn new(ty: MessageType) -> Result<Self, String> {
        if ty.members.is_null() {
            return Err("the type's introspection is not loaded".into());
        }
        // SAFETY: members points at the type's introspection data; the memory is sized
        // and aligned for the struct (16 is the largest alignment a ROS 2 C type needs)
        // and initialised by the type's own init function.
        unsafe {
            let members = &*ty.members;
            let layout = std::alloc::Layout::from_size_align(members.size_of_.max(1), 16)
                .map_err(|e| e.to_string())?;
            let ptr = std::alloc::alloc_zeroed(layout);
            if ptr.is_null() {
                std::alloc::handle_alloc_error(layout);
            }
            if let Some(init) = members.init_function {
                init(
                    ptr as *mut c_void,
                    sys::rosidl_runtime_c__message_initialization::ROSIDL_RUNTIME_C_MSG_INIT_ALL,
                );
            }
            Ok(Self { ty, ptr, layout })
        }
    }

    /// The message read from `cdr` (encapsulation header included) by the RMW.
    fn from_cdr(ty: MessageType, cdr: &[u8]) -> Result<Self, String> {
        let m = Self::new(ty)?;
        // SAFETY: rmw only reads the borrowed buffer; the struct is initialised.
        unsafe {
            let message = sys::rcl_serialized_message_t {
                buffer: cdr.as_ptr() as *mut u8,
                buffer_length: cdr.len(),
                buffer_capacity: cdr.len(),
                allocator: allocator(),
            };
            let ret = sys::rmw_deserialize(&message, ty.ts, m.ptr as *mut c_void);
            if ret != sys::RMW_RET_OK as sys::rmw_ret_t {
                return Err(rcl_error("reading the message", ret));
            }
        }
        Ok(m)
    }

    /// The message serialized by the RMW (encapsulation header included).
    fn to_cdr(&self) -> Result<Bytes, String> {
        // SAFETY: the buffer is initialised empty with the default allocator, grown by
        // rmw, copied out and finalised.
        unsafe {
            let mut out = sys::rcutils_get_zero_initialized_uint8_array();
            let alloc = allocator();
            check(
                sys::rcutils_uint8_array_init(&mut out, 0, &alloc),
                "allocating a buffer",
            )?;
            let ret = sys::rmw_serialize(self.ptr as *const c_void, self.ty.ts, &mut out);
            let result = if ret == sys::RMW_RET_OK as sys::rmw_ret_t {
                Ok(Bytes::copy_from_slice(std::slice::from_raw_parts(
                    out.buffer,
                    out.buffer_length,
                )))
            } else {
                Err(rcl_error("writing the message", ret))
            };
            sys::rcutils_uint8_array_fini(&mut out);
            result
        }
    }

    fn as_ptr(&self) -> *mut c_void {
        self.ptr as *mut c_void
    }
}

impl Drop for CMessage {
    fn drop(&mut self) {
        // SAFETY: the struct was initialised by the type's init function and is
        // finalised once by its fini function, then freed with its layout.
        unsafe {
            if let Some(fini) = (*self.ty.members).fini_function {
                fini(self.ptr as *mut c_void);
            }
            std::alloc::dealloc(self.ptr, self.layout);
        }
    }
}

/// A served service.
pub(crate) struct Service(Arc<ServiceShared>);

struct ServiceShared {
    node: Arc<Node>,
    handle: Box<sys::rcl_service_t>,
    name: String,
    ty: ServiceType,
    handler: ServeFn,
    /// One reply at a time on this service.
    send: Mutex<()>,
}

unsafe impl Send for ServiceShared {}
unsafe impl Sync for ServiceShared {}

impl Drop for ServiceShared {
    fn drop(&mut self) {
        // SAFETY: initialised on this node, finalised once.
        unsafe {
            sys::rcl_service_fini(&mut *self.handle, self.node.node);
        }
    }
}

impl Service {
    /// Takes every waiting request and hands each to the handler on its own task.
    fn take(&self, runtime: &tokio::runtime::Handle) {
        let shared = &self.0;
        loop {
            let request = match CMessage::new(shared.ty.request) {
                Ok(r) => r,
                Err(e) => {
                    tracing::debug!(service = %shared.name, "{e}");
                    return;
                }
            };
            // SAFETY: a zeroed request id is a plain value rcl fills.
            let mut header: sys::rmw_request_id_t = unsafe { std::mem::zeroed() };
            // SAFETY: the request struct is initialised for this service's request type.
            let ret =
                unsafe { sys::rcl_take_request(&*shared.handle, &mut header, request.as_ptr()) };
            if ret == sys::RCL_RET_SERVICE_TAKE_FAILED as sys::rcl_ret_t {
                return;
            }
            if ret != sys::RCL_RET_OK as sys::rcl_ret_t {
                let why = rcl_error("taking a request", ret);
                tracing::debug!(service = %shared.name, "{why}");
                return;
            }
            let cdr = match request.to_cdr() {
                Ok(c) => c,
                Err(e) => {
                    tracing::debug!(service = %shared.name, "A request could not be read: {e}");
                    continue;
                }
            };
            drop(request);
            let shared = shared.clone();
            runtime.spawn(async move {
                let reply = match (shared.handler)(cdr).await {
                    Ok(r) => r,
                    Err(e) => {
                        tracing::debug!(service = %shared.name, "No reply: {e}");
                        return;
                    }
                };
                if let Err(e) = shared.reply(header, &reply) {
                    tracing::warn!(service = %shared.name, "The reply was not sent: {e}");
                }
            });
        }
    }
}

impl ServiceShared {
    fn reply(&self, mut header: sys::rmw_request_id_t, reply: &[u8]) -> Result<(), String> {
        let response = CMessage::from_cdr(self.ty.response, reply)?;
        let _one = self.send.lock().unwrap_or_else(|p| p.into_inner());
        // SAFETY: the response struct is initialised for this service's reply type.
        check(
            unsafe { sys::rcl_send_response(&*self.handle, &mut header, response.as_ptr()) },
            "sending the reply",
        )
    }
}

/// A service client; replies are matched to calls by sequence number.
pub(crate) struct Client {
    node: Arc<Node>,
    handle: Box<sys::rcl_client_t>,
    ty: ServiceType,
    waiting: Mutex<HashMap<i64, mpsc::Sender<Bytes>>>,
}

unsafe impl Send for Client {}
unsafe impl Sync for Client {}

impl Drop for Client {
    fn drop(&mut self) {
        // SAFETY: initialised on this node, finalised once.
        unsafe {
            sys::rcl_client_fini(&mut *self.handle, self.node.node);
        }
    }
}

/// Forgets a call's sequence numbers when the call ends, however it ends.
struct Forget<'a> {
    client: &'a Client,
    seqs: Vec<i64>,
}

impl Drop for Forget<'_> {
    fn drop(&mut self) {
        let mut waiting = self
            .client
            .waiting
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        for s in &self.seqs {
            waiting.remove(s);
        }
    }
}

impl Client {
    pub(crate) fn server_available(&self) -> Result<bool, String> {
        let mut available = false;
        // SAFETY: a valid node and client, a plain out value.
        check(
            unsafe {
                sys::rcl_service_server_is_available(self.node.node, &*self.handle, &mut available)
            },
            "looking for the server",
        )?;
        Ok(available)
    }

    fn send(&self, request: &CMessage, tx: &mpsc::Sender<Bytes>) -> Result<i64, String> {
        // The wait thread looks a reply up under this lock, so the sequence number is
        // known before any reply to it can be.
        let mut waiting = self.waiting.lock().unwrap_or_else(|p| p.into_inner());
        let mut seq = 0i64;
        // SAFETY: the request struct is initialised for this service's request type.
        check(
            unsafe { sys::rcl_send_request(&*self.handle, request.as_ptr(), &mut seq) },
            "sending the request",
        )?;
        waiting.insert(seq, tx.clone());
        Ok(seq)
    }

    /// Sends `request` (serialized) and waits for its reply; with `resend`, sends it
    /// again every 500 ms until then.
    pub(crate) async fn call(
        &self,
        request: Bytes,
        timeout: Duration,
        resend: bool,
    ) -> Result<Option<Bytes>, String> {
        let message = CMessage::from_cdr(self.ty.request, &request)
            .map_err(|e| format!("the request: {e}"))?;
        let (tx, mut rx) = mpsc::channel(1);
        let mut forget = Forget {
            client: self,
            seqs: Vec::new(),
        };
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            forget.seqs.push(self.send(&message, &tx)?);
            let until = if resend {
                deadline.min(tokio::time::Instant::now() + Duration::from_millis(500))
            } else {
                deadline
            };
            if let Ok(reply) = tokio::time::timeout_at(until, rx.recv()).await {
                return Ok(reply);
            }
            if tokio::time::Instant::now() >= deadline {
                return Ok(None);
            }
        }
    }

    /// Takes every waiting reply to the caller that waits for it.
    fn take(&self) {
        loop {
            let Ok(response) = CMessage::new(self.ty.response) else {
                return;
            };
            // SAFETY: a zeroed request id is a plain value rcl fills.
            let mut header: sys::rmw_request_id_t = unsafe { std::mem::zeroed() };
            // SAFETY: the response struct is initialised for this service's reply type.
            let ret =
                unsafe { sys::rcl_take_response(&*self.handle, &mut header, response.as_ptr()) };
            if ret == sys::RCL_RET_CLIENT_TAKE_FAILED as sys::rcl_ret_t {
                return;
            }
            if ret != sys::RCL_RET_OK as sys::rcl_ret_t {
                let why = rcl_error("taking a reply", ret);
                tracing::debug!("{why}");
                return;
            }
            let waiter = self
                .waiting
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&header.sequence_number);
            if let Some(tx) = waiter {
                match response.to_cdr() {
                    Ok(cdr) => {
                        let _ = tx.try_send(cdr);
                    }
                    Err(e) => tracing::debug!("A reply could not be read: {e}"),
                }
            }
        }
    }
}

/// How long one wait lasts when nothing waits for room in a channel, and when something
/// does (the channel is looked at again after it).
const WAIT: Duration = Duration::from_millis(500);
const WAIT_FOR_ROOM: Duration = Duration::from_millis(5);

/// The wait thread: waits on everything the node has, hands out what arrives.
fn wait_loop(node: &Arc<Node>) {
    let mut subscriptions: Vec<Subscription> = Vec::new();
    let mut services: Vec<Service> = Vec::new();
    let mut clients: Vec<Arc<Client>> = Vec::new();
    // SAFETY: zero-initialised objects, initialised below before use.
    let mut wait_set = unsafe { sys::rcl_get_zero_initialized_wait_set() };
    let alloc = allocator();
    let mut buffer = match Buffer::new() {
        Ok(b) => b,
        Err(e) => {
            *node.stopped.lock().unwrap_or_else(|p| p.into_inner()) = Some(e);
            return;
        }
    };
    let mut sized: Option<(usize, usize, usize)> = None;
    let mut failures = 0u32;
    while !node.stop.load(Ordering::SeqCst) {
        {
            let mut incoming = node.incoming();
            subscriptions.append(&mut incoming.subscriptions);
            services.append(&mut incoming.services);
            clients.append(&mut incoming.clients);
        }
        let mut waiting_for_room = false;
        let mut open: Vec<usize> = Vec::new();
        for (i, s) in subscriptions.iter_mut().enumerate() {
            if s.offer_pending() {
                open.push(i);
            } else if !s.closed {
                waiting_for_room = true;
            }
        }
        let counts = (subscriptions.len(), clients.len(), services.len());
        // SAFETY: the wait set is (re)initialised for the current counts, cleared and
        // filled with entities that live in the vectors above until the next round.
        let ret = unsafe {
            if sized != Some(counts) {
                if sized.is_some() {
                    sys::rcl_wait_set_fini(&mut wait_set);
                    wait_set = sys::rcl_get_zero_initialized_wait_set();
                }
                if let Err(e) = check(
                    sys::rcl_wait_set_init(
                        &mut wait_set,
                        counts.0,
                        1,
                        0,
                        counts.1,
                        counts.2,
                        0,
                        node.context,
                        alloc,
                    ),
                    "creating the wait set",
                ) {
                    *node.stopped.lock().unwrap_or_else(|p| p.into_inner()) = Some(e);
                    sized = None;
                    break;
                }
                sized = Some(counts);
            }
            sys::rcl_wait_set_clear(&mut wait_set);
            sys::rcl_wait_set_add_guard_condition(&mut wait_set, node.guard, std::ptr::null_mut());
            let mut slots = Vec::with_capacity(open.len());
            for &i in &open {
                let mut slot = 0usize;
                sys::rcl_wait_set_add_subscription(
                    &mut wait_set,
                    &*subscriptions[i].handle,
                    &mut slot,
                );
                slots.push((slot, i));
            }
            for s in &services {
                sys::rcl_wait_set_add_service(&mut wait_set, &*s.0.handle, std::ptr::null_mut());
            }
            for c in &clients {
                sys::rcl_wait_set_add_client(&mut wait_set, &*c.handle, std::ptr::null_mut());
            }
            let timeout = if waiting_for_room {
                WAIT_FOR_ROOM
            } else {
                WAIT
            };
            let ret = sys::rcl_wait(&mut wait_set, timeout.as_nanos() as i64);
            if ret == sys::RCL_RET_OK as sys::rcl_ret_t {
                for (slot, i) in slots {
                    if !(*wait_set.subscriptions.add(slot)).is_null() {
                        subscriptions[i].take(&mut buffer.0);
                    }
                }
                for (k, s) in services.iter().enumerate() {
                    if !(*wait_set.services.add(k)).is_null() {
                        s.take(&node.runtime);
                    }
                }
                for (k, c) in clients.iter().enumerate() {
                    if !(*wait_set.clients.add(k)).is_null() {
                        c.take();
                    }
                }
            }
            ret
        };
        if ret == sys::RCL_RET_OK as sys::rcl_ret_t || ret == sys::RCL_RET_TIMEOUT as sys::rcl_ret_t
        {
            failures = 0;
            continue;
        }
        failures += 1;
        let why = rcl_error("waiting", ret);
        if failures == 1 {
            tracing::warn!("rcl could not wait for messages: {why}. Trying again.");
        }
        if failures >= 100 {
            *node.stopped.lock().unwrap_or_else(|p| p.into_inner()) =
                Some(format!("rcl cannot wait for messages: {why}"));
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    // SAFETY: finalised once, after the last wait.
    unsafe {
        if sized.is_some() {
            sys::rcl_wait_set_fini(&mut wait_set);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::missing;

    #[test]
    fn gaps_in_a_publishers_sequence_numbers_are_the_messages_lost() {
        assert_eq!(missing(None, 57), 0, "a publisher seen for the first time");
        assert_eq!(missing(Some(57), 58), 0);
        assert_eq!(missing(Some(57), 61), 3);
        assert_eq!(missing(Some(61), 61), 0, "the same message again");
        assert_eq!(missing(Some(61), 5), 0, "a publisher that restarted");
    }
}
