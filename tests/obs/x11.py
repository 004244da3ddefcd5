"""Close an X11 window the way a window manager's close button does: a ``WM_DELETE_WINDOW`` client message.

Why the OBS harness needs it: OBS 29 (Debian's 29.0.2) closes its main window from inside its SIGINT handler. When
the signal lands while OBS's main thread is inside an X call (it holds libxcb's lock), the close path's own X
requests wait for that lock forever: OBS hangs after "==== Shutting down" (or before it), its scripts are never
unloaded, and it has to be killed (seen with gdb: ``xcb_take_socket`` under ``QWidget::setCursor`` under
``QWidgetPrivate::close_helper`` under ``<signal handler called>`` under ``xcb_wait_for_reply``; the busier the
machine, the longer the main thread sits in X calls). A client message instead reaches Qt through its X event
queue, so OBS closes on its main thread, in its event loop, like a user closing the window.

Only libX11 through ctypes (OBS itself links it): no xdotool or python-xlib needed.
"""

from __future__ import annotations

import ctypes
import ctypes.util
from ctypes import POINTER, byref, c_char_p, c_int, c_long, c_ubyte, c_uint, c_ulong, c_void_p

CLIENT_MESSAGE = 33  # X.h ClientMessage
XA_CARDINAL = 6  # Xatom.h


class _ClientMessage(ctypes.Structure):
    _fields_ = [("type", c_int), ("serial", c_ulong), ("send_event", c_int), ("display", c_void_p),
                ("window", c_ulong), ("message_type", c_ulong), ("format", c_int), ("data", c_long * 5)]


class _Event(ctypes.Union):
    _fields_ = [("xclient", _ClientMessage), ("pad", c_long * 24)]  # XEvent is 24 longs


def _xlib() -> ctypes.CDLL:
    lib = ctypes.CDLL(ctypes.util.find_library("X11") or "libX11.so.6")
    lib.XOpenDisplay.argtypes, lib.XOpenDisplay.restype = [c_char_p], c_void_p
    lib.XCloseDisplay.argtypes = [c_void_p]
    lib.XDefaultRootWindow.argtypes, lib.XDefaultRootWindow.restype = [c_void_p], c_ulong
    lib.XInternAtom.argtypes, lib.XInternAtom.restype = [c_void_p, c_char_p, c_int], c_ulong
    lib.XQueryTree.argtypes = [c_void_p, c_ulong, POINTER(c_ulong), POINTER(c_ulong), POINTER(POINTER(c_ulong)),
                               POINTER(c_uint)]
    lib.XGetWindowProperty.argtypes = [c_void_p, c_ulong, c_ulong, c_long, c_long, c_int, c_ulong, POINTER(c_ulong),
                                       POINTER(c_int), POINTER(c_ulong), POINTER(c_ulong), POINTER(POINTER(c_ubyte))]
    lib.XFetchName.argtypes = [c_void_p, c_ulong, POINTER(c_char_p)]
    lib.XSendEvent.argtypes = [c_void_p, c_ulong, c_int, c_long, POINTER(_Event)]
    lib.XFlush.argtypes = [c_void_p]
    lib.XFree.argtypes = [c_void_p]
    return lib


def _pid_of(lib: ctypes.CDLL, dpy: int, window: int, atom: int) -> int | None:
    kind, fmt, n, after = c_ulong(), c_int(), c_ulong(), c_ulong()
    data = POINTER(c_ubyte)()
    if lib.XGetWindowProperty(dpy, window, atom, 0, 1, 0, XA_CARDINAL, byref(kind), byref(fmt), byref(n),
                              byref(after), byref(data)) != 0 or not data:
        return None
    try:
        return int(ctypes.cast(data, POINTER(c_ulong))[0]) if fmt.value == 32 and n.value == 1 else None
    finally:
        lib.XFree(data)


def _name_of(lib: ctypes.CDLL, dpy: int, window: int) -> str:
    name = c_char_p()
    if not lib.XFetchName(dpy, window, byref(name)) or name.value is None:
        return ""
    try:
        return name.value.decode(errors="replace")
    finally:
        lib.XFree(name)


def close_window(display: str, pid: int, title_prefix: str) -> str | None:
    """Send ``WM_DELETE_WINDOW`` to the top-level window of process ``pid`` on ``display`` (e.g. ":120") whose
    title starts with ``title_prefix``; returns that title, or None when there is no such window."""
    lib = _xlib()
    dpy = lib.XOpenDisplay(display.encode())
    if not dpy:
        raise RuntimeError(f"cannot open X display {display}")
    try:
        root = lib.XDefaultRootWindow(dpy)
        pid_atom = lib.XInternAtom(dpy, b"_NET_WM_PID", 0)
        r, parent, n = c_ulong(), c_ulong(), c_uint()
        children = POINTER(c_ulong)()
        if not lib.XQueryTree(dpy, root, byref(r), byref(parent), byref(children), byref(n)):
            return None
        try:
            windows = [children[i] for i in range(n.value)]
        finally:
            if children:
                lib.XFree(children)
        for window in windows:  # no window manager under Xvfb: top-level windows are the root's children
            title = _name_of(lib, dpy, window)
            if title.startswith(title_prefix) and _pid_of(lib, dpy, window, pid_atom) == pid:
                event = _Event()
                msg = event.xclient
                msg.type, msg.window, msg.format = CLIENT_MESSAGE, window, 32
                msg.message_type = lib.XInternAtom(dpy, b"WM_PROTOCOLS", 0)
                msg.data[0] = lib.XInternAtom(dpy, b"WM_DELETE_WINDOW", 0)  # data[1] = 0: CurrentTime
                if not lib.XSendEvent(dpy, window, 0, 0, byref(event)):
                    raise RuntimeError(f"X display {display}: sending WM_DELETE_WINDOW to {title!r} failed")
                lib.XFlush(dpy)
                return title
        return None
    finally:
        lib.XCloseDisplay(dpy)
