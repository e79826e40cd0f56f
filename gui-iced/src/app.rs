//! The interface's state and its update function, free of windows and sockets: each update
//! returns the requests to send to the daemon and the windows to open or close.

use std::collections::{BTreeMap, HashMap, HashSet};

use iced::{keyboard, window};
use tollgate_proxy::protocol::{ErrorCode, PendingInfo, Request, StatusInfo};
use tollgate_rules::Action;

use crate::{
    apps::{AppDirectory, load_icon},
    format,
    link::LinkEvent,
    monitor::{Monitor, MonitorMessage},
    prompt::{AppKey, AppLabel, Prompt, PromptMessage, view::Countdown},
    rules::{RulesMessage, RulesView},
};

/// Prompt timeout assumed until the daemon reports its own, in milliseconds.
const DEFAULT_TIMEOUT_MS: u64 = 60_000;

/// A window of the interface.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum WindowKind {
    /// The prompt of one application.
    Prompt(AppKey),
    /// The connection monitor.
    Monitor,
    /// The rule list.
    Rules,
}

/// Something that happened, for [`App::update`].
#[derive(Debug, Clone)]
pub enum Message {
    /// News from the link to the daemon.
    Link(LinkEvent),
    /// A second passed; countdowns move on.
    Tick,
    /// A change in a prompt window.
    Prompt(window::Id, PromptMessage),
    /// A change in the monitor.
    Monitor(MonitorMessage),
    /// A change in the rules window.
    Rules(RulesMessage),
    /// A key was pressed in a window.
    KeyPressed(window::Id, keyboard::Key),
    /// A window gained or lost the keyboard focus.
    Focus(window::Id, bool),
    /// A window was closed.
    Closed(window::Id),
}

/// Work an update leaves to the outside world.
#[derive(Debug, Default, PartialEq)]
pub struct Effects {
    /// Requests to send to the daemon, in order.
    pub requests: Vec<Request>,
    /// Windows to open.
    pub open: Vec<WindowKind>,
    /// Windows to close.
    pub close: Vec<window::Id>,
}

/// Whether the daemon can be reached.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LinkState {
    /// Not connected yet.
    Connecting,
    /// Connected.
    Connected,
    /// Unreachable, with the reason.
    Down(String),
}

/// The whole interface's state.
#[derive(Debug)]
pub struct App {
    /// Whether the daemon can be reached.
    pub link: LinkState,
    /// The daemon's status, once known.
    pub status: Option<StatusInfo>,
    /// Prompts by application.
    pub prompts: BTreeMap<AppKey, Prompt>,
    /// The monitor's state.
    pub monitor: Monitor,
    /// The rules window's state.
    pub rules: RulesView,
    /// Reason the last change to rules or connections failed.
    pub error: Option<String>,
    /// Reasons decisions on pending requests failed, by request, until their prompt shows them.
    failed_decisions: HashMap<u64, String>,
    windows: BTreeMap<window::Id, WindowKind>,
    /// Pending requests answered here or whose prompt was closed: not shown again.
    settled: HashSet<u64>,
    apps: AppDirectory,
    now_unix_ms: u64,
}

impl App {
    /// Creates the state; `apps` names applications in prompts.
    pub fn new(apps: AppDirectory) -> Self {
        Self {
            link: LinkState::Connecting,
            status: None,
            prompts: BTreeMap::new(),
            monitor: Monitor::default(),
            rules: RulesView::default(),
            error: None,
            failed_decisions: HashMap::new(),
            windows: BTreeMap::new(),
            settled: HashSet::new(),
            apps,
            now_unix_ms: 0,
        }
    }

    /// Records that window `id` shows `kind`.
    pub fn window_opened(&mut self, id: window::Id, kind: WindowKind) {
        self.windows.insert(id, kind);
    }

    /// Returns what window `id` shows.
    pub fn window(&self, id: window::Id) -> Option<&WindowKind> {
        self.windows.get(&id)
    }

    /// Returns the prompt that window `id` shows.
    pub fn prompt_in(&self, id: window::Id) -> Option<&Prompt> {
        match self.windows.get(&id)? {
            WindowKind::Prompt(key) => self.prompts.get(key),
            _ => None,
        }
    }

    /// Returns the countdown the prompts show at the current time.
    pub fn countdown(&self) -> Countdown {
        let (timeout_ms, default_action) = match &self.status {
            Some(status) => (status.prompt_timeout_secs * 1000, status.default_action),
            None => (DEFAULT_TIMEOUT_MS, Action::Deny),
        };
        Countdown {
            timeout_ms,
            default_action,
            now_unix_ms: self.now_unix_ms,
        }
    }

    /// Returns why the daemon cannot be reached, for a banner.
    pub fn banner(&self) -> Option<String> {
        match &self.link {
            _ if self.error.is_some() && !matches!(self.link, LinkState::Down(_)) => {
                self.error.clone()
            }
            LinkState::Connected => None,
            LinkState::Connecting => Some("Connecting to tollgated…".to_owned()),
            LinkState::Down(reason) => Some(format!(
                "Cannot reach tollgated: {reason}. Start it with `sudo tollgated`; \
                 retrying every second."
            )),
        }
    }

    /// Handles `message` at time `now_unix_ms` and returns what to do outside.
    pub fn update(&mut self, message: Message, now_unix_ms: u64) -> Effects {
        self.now_unix_ms = now_unix_ms;
        let mut effects = Effects::default();
        match message {
            Message::Link(event) => self.link_event(event, &mut effects),
            Message::Tick => {}
            Message::Prompt(id, message) => self.prompt_message(id, message, &mut effects),
            Message::Monitor(MonitorMessage::OpenRules) => {
                self.show(WindowKind::Rules, &mut effects);
            }
            Message::Monitor(message) => {
                self.error = None;
                effects.requests = self.monitor.update(message);
            }
            Message::Rules(message) => {
                self.error = None;
                effects.requests = self.rules.update(message);
            }
            Message::KeyPressed(id, key) => self.key_pressed(id, &key, &mut effects),
            Message::Focus(id, focused) => self.focus(id, focused),
            Message::Closed(id) => self.closed(id),
        }
        effects
    }

    /// Opens `kind` unless a window already shows it.
    pub fn show(&mut self, kind: WindowKind, effects: &mut Effects) {
        let open = self.windows.values().any(|shown| *shown == kind);
        if !open && !effects.open.contains(&kind) {
            effects.open.push(kind);
        }
    }

    fn link_event(&mut self, event: LinkEvent, effects: &mut Effects) {
        match event {
            LinkEvent::Connected(_) => self.link = LinkState::Connected,
            LinkEvent::Disconnected(reason) => {
                self.link = LinkState::Down(reason);
                // A restarted daemon numbers its requests anew, so nothing shown stays valid.
                self.set_pending(Vec::new(), effects);
                self.settled.clear();
            }
            LinkEvent::Status(status) => self.status = Some(status),
            LinkEvent::Pending(requests) => self.set_pending(requests, effects),
            LinkEvent::Rules(rules) => self.rules.rules = rules,
            LinkEvent::Connections(connections) => self.monitor.connections = connections,
            LinkEvent::Event(event) => self.monitor.apply(&event),
            LinkEvent::Failed {
                request,
                code,
                message,
            } => self.failed(&request, code, message),
        }
    }

    /// Replaces the pending requests: new applications get a prompt window, and prompts
    /// whose requests were all settled, here or by another interface, close.
    fn set_pending(&mut self, requests: Vec<PendingInfo>, effects: &mut Effects) {
        let live: HashSet<u64> = requests.iter().map(|request| request.id).collect();
        self.settled.retain(|id| live.contains(id));
        let mut by_app: BTreeMap<AppKey, Vec<PendingInfo>> = BTreeMap::new();
        for request in requests {
            if !self.settled.contains(&request.id) {
                by_app
                    .entry(AppKey::of(&request))
                    .or_default()
                    .push(request);
            }
        }
        self.prompts.retain(|key, _| by_app.contains_key(key));
        for (key, requests) in by_app {
            if !self.prompts.contains_key(&key) {
                let label = self.label(&key);
                self.prompts
                    .insert(key.clone(), Prompt::new(key.clone(), label));
            }
            if let Some(prompt) = self.prompts.get_mut(&key) {
                let failure = requests
                    .iter()
                    .find_map(|request| self.failed_decisions.remove(&request.id));
                if failure.is_some() {
                    prompt.error = failure;
                }
                prompt.requests = requests;
            }
            self.show(WindowKind::Prompt(key), effects);
        }
        let stale: Vec<window::Id> = self
            .windows
            .iter()
            .filter(|(_, kind)| match kind {
                WindowKind::Prompt(key) => !self.prompts.contains_key(key),
                _ => false,
            })
            .map(|(id, _)| *id)
            .collect();
        for id in stale {
            self.close(id, effects);
        }
    }

    /// Closes window `id` and removes it from the window table at once, so that a prompt needed
    /// again for the same application opens a new window.
    fn close(&mut self, id: window::Id, effects: &mut Effects) {
        self.windows.remove(&id);
        effects.close.push(id);
    }

    fn label(&mut self, key: &AppKey) -> AppLabel {
        let (name, entry) = match key {
            AppKey::Unknown => (format::UNKNOWN_PROCESS.to_owned(), None),
            AppKey::Command(command) => (command.clone(), None),
            AppKey::Executable(path) => {
                let file = path.file_name().unwrap_or(path.as_os_str());
                (file.to_string_lossy().into_owned(), self.apps.lookup(path))
            }
        };
        match entry {
            Some(entry) => AppLabel {
                name: entry.name,
                icon: entry.icon.as_deref().and_then(load_icon),
            },
            None => AppLabel { name, icon: None },
        }
    }

    fn prompt_message(&mut self, id: window::Id, message: PromptMessage, effects: &mut Effects) {
        let Some(WindowKind::Prompt(key)) = self.windows.get(&id) else {
            return;
        };
        let Some(prompt) = self.prompts.get_mut(key) else {
            return;
        };
        let requests = prompt.update(message);
        self.answered(id, requests, effects);
    }

    fn key_pressed(&mut self, id: window::Id, key: &keyboard::Key, effects: &mut Effects) {
        let Some(WindowKind::Prompt(app)) = self.windows.get(&id) else {
            return;
        };
        let Some(prompt) = self.prompts.get_mut(app) else {
            return;
        };
        let requests = prompt.key_pressed(key, self.now_unix_ms);
        self.answered(id, requests, effects);
    }

    /// Sends the decisions of the prompt in window `id` and closes it, without waiting for the
    /// daemon, so the person can go on at once.
    fn answered(&mut self, id: window::Id, requests: Vec<Request>, effects: &mut Effects) {
        if requests.is_empty() {
            return;
        }
        for request in &requests {
            if let Request::Decide { id, .. } = request {
                self.settled.insert(*id);
            }
        }
        if let Some(WindowKind::Prompt(key)) = self.windows.get(&id) {
            self.prompts.remove(key);
        }
        effects.requests = requests;
        self.close(id, effects);
    }

    fn focus(&mut self, id: window::Id, focused: bool) {
        let now = self.now_unix_ms;
        let Some(WindowKind::Prompt(key)) = self.windows.get(&id) else {
            return;
        };
        if let Some(prompt) = self.prompts.get_mut(key) {
            prompt.focused_since = focused.then_some(now);
        }
    }

    /// Forgets a closed window. A prompt closed without an answer leaves its requests to the
    /// daemon's timeout and does not come back for them.
    fn closed(&mut self, id: window::Id) {
        let Some(WindowKind::Prompt(key)) = self.windows.remove(&id) else {
            return;
        };
        if let Some(prompt) = self.prompts.remove(&key) {
            self.settled
                .extend(prompt.requests.iter().map(|request| request.id));
        }
    }

    fn failed(&mut self, request: &Request, code: ErrorCode, message: String) {
        // Another interface or a rule settled the request first: nothing to report.
        if matches!(request, Request::Decide { .. }) && code == ErrorCode::NotFound {
            return;
        }
        tracing::warn!(?request, ?code, %message, "request failed");
        let Request::Decide { id, .. } = request else {
            self.error = Some(message);
            return;
        };
        // The decision was not applied, so the request comes back in its prompt.
        self.settled.remove(id);
        self.failed_decisions.insert(*id, message);
    }
}
