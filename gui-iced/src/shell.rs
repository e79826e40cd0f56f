//! The iced side of the interface: windows, subscriptions and the link task, around the
//! window-free [`App`].

use std::{
    path::PathBuf,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use iced::{
    Element, Size, Subscription, Task, Theme, event, keyboard,
    widget::text,
    window::{self, Level, Position},
};
use tracing::warn;

use crate::{
    app::{App, Message, WindowKind},
    apps::AppDirectory,
    link::{self, LinkEvent, RequestSender},
    monitor, prompt, rules, x11,
};

/// Start-up options.
#[derive(Debug, Clone)]
pub struct Options {
    /// The daemon's control socket.
    pub socket: PathBuf,
    /// Whether the monitor window opens at start.
    pub open_monitor: bool,
}

/// A message of the iced program: the application's, or a step of showing a prompt window
/// without giving it the focus.
#[derive(Debug, Clone)]
pub enum ShellMessage {
    /// A message for [`App::update`].
    App(Message),
    /// A hidden prompt window has this X window id.
    NativeId(window::Id, u64),
    /// A hidden prompt window may now be shown.
    Reveal(window::Id),
}

/// The iced program's state.
pub struct Shell {
    app: App,
    sender: Option<RequestSender>,
    socket: PathBuf,
}

/// Runs the interface until it is killed; closing its windows does not end it, because
/// prompts may come at any time.
pub fn run(options: Options) -> iced::Result {
    iced::daemon(move || boot(options.clone()), update, view)
        .title(title)
        .subscription(subscription)
        .theme(|_: &Shell, _| Theme::Light)
        .run()
}

fn boot(options: Options) -> (Shell, Task<ShellMessage>) {
    let mut shell = Shell {
        app: App::new(AppDirectory::system()),
        sender: None,
        socket: options.socket,
    };
    let task = if options.open_monitor {
        open(&mut shell, WindowKind::Monitor)
    } else {
        Task::none()
    };
    (shell, task)
}

fn update(shell: &mut Shell, message: ShellMessage) -> Task<ShellMessage> {
    match message {
        ShellMessage::App(message) => update_app(shell, message),
        ShellMessage::NativeId(id, native) => Task::perform(
            async move {
                let marked = u32::try_from(native).map_err(|_| "not an X11 window id".to_owned());
                let marked = marked.and_then(|window| {
                    x11::forbid_initial_focus(window).map_err(|err| format!("{err}"))
                });
                if let Err(err) = marked {
                    warn!(error = %err, "prompt may take the focus when it appears");
                }
            },
            move |()| ShellMessage::Reveal(id),
        ),
        ShellMessage::Reveal(id) => window::set_mode(id, window::Mode::Windowed),
    }
}

fn update_app(shell: &mut Shell, message: Message) -> Task<ShellMessage> {
    match &message {
        Message::Link(LinkEvent::Connected(sender)) => shell.sender = Some(sender.clone()),
        Message::Link(LinkEvent::Disconnected(_)) => shell.sender = None,
        _ => {}
    }
    let effects = shell.app.update(message, unix_ms());
    for request in effects.requests {
        let sent = shell
            .sender
            .as_ref()
            .is_some_and(|sender| sender.send(request));
        if !sent {
            warn!("tollgated unreachable; request dropped");
        }
    }
    let opened = effects.open.into_iter().map(|kind| open(shell, kind));
    let closed = effects.close.into_iter().map(window::close);
    Task::batch(opened.collect::<Vec<_>>().into_iter().chain(closed))
}

/// Opens a window. Prompts open hidden, so that they can be marked as not to be focused
/// before they appear. The other windows open normally, because the person requested them.
fn open(shell: &mut Shell, kind: WindowKind) -> Task<ShellMessage> {
    let is_prompt = matches!(kind, WindowKind::Prompt(_));
    let (id, opened) = window::open(settings(&kind));
    shell.app.window_opened(id, kind);
    if !is_prompt {
        return opened.discard();
    }
    opened.then(|id| {
        window::raw_id::<ShellMessage>(id).map(move |native| ShellMessage::NativeId(id, native))
    })
}

fn settings(kind: &WindowKind) -> window::Settings {
    let size = match kind {
        WindowKind::Prompt(_) => Size::new(600.0, 440.0),
        WindowKind::Monitor => Size::new(920.0, 600.0),
        WindowKind::Rules => Size::new(900.0, 500.0),
    };
    window::Settings {
        size,
        position: Position::Centered,
        visible: !matches!(kind, WindowKind::Prompt(_)),
        // A prompt must not cover what the person works on, nor stay above it.
        level: Level::Normal,
        platform_specific: window::settings::PlatformSpecific {
            application_id: "tollgate-ui".to_owned(),
            ..Default::default()
        },
        ..window::Settings::default()
    }
}

fn title(shell: &Shell, id: window::Id) -> String {
    match shell.app.window(id) {
        Some(WindowKind::Prompt(_)) => match shell.app.prompt_in(id) {
            Some(prompt) => format!("Tollgate: {} wants to connect", prompt.label.name),
            None => "Tollgate prompt".to_owned(),
        },
        Some(WindowKind::Monitor) => "Tollgate connections".to_owned(),
        Some(WindowKind::Rules) => "Tollgate rules".to_owned(),
        None => "Tollgate".to_owned(),
    }
}

fn view(shell: &Shell, id: window::Id) -> Element<'_, ShellMessage> {
    let app = &shell.app;
    let content: Element<'_, Message> = match app.window(id) {
        Some(WindowKind::Prompt(_)) => match app.prompt_in(id) {
            Some(prompt) => prompt::view::view(prompt, app.countdown())
                .map(move |message| Message::Prompt(id, message)),
            None => text("Answered").into(),
        },
        Some(WindowKind::Monitor) => {
            monitor::view::view(&app.monitor, app.banner()).map(Message::Monitor)
        }
        Some(WindowKind::Rules) => rules::view::view(&app.rules, app.banner()).map(Message::Rules),
        None => text("").into(),
    };
    content.map(ShellMessage::App)
}

fn subscription(shell: &Shell) -> Subscription<ShellMessage> {
    Subscription::batch([
        Subscription::run_with(shell.socket.clone(), link::connect).map(Message::Link),
        iced::time::every(Duration::from_secs(1)).map(|_| Message::Tick),
        event::listen_with(window_event),
        window::close_events().map(Message::Closed),
    ])
    .map(ShellMessage::App)
}

/// Turns the keyboard and focus events of a window into messages. Keys with Ctrl, Alt or the
/// logo key held are left alone, so that shortcuts of the desktop keep working.
fn window_event(event: iced::Event, status: event::Status, id: window::Id) -> Option<Message> {
    match event {
        iced::Event::Keyboard(keyboard::Event::KeyPressed { key, modifiers, .. })
            if status == event::Status::Ignored
                && !(modifiers.control() || modifiers.alt() || modifiers.logo()) =>
        {
            Some(Message::KeyPressed(id, key))
        }
        iced::Event::Window(window::Event::Focused) => Some(Message::Focus(id, true)),
        iced::Event::Window(window::Event::Unfocused) => Some(Message::Focus(id, false)),
        _ => None,
    }
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| {
            u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX)
        })
}
