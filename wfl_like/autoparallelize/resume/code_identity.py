"""What a piece of code is, for cache keys: the code it runs and what that code reads.

An operation's output depends on more than its own bytecode: on the module-level
constants it reads, on the helpers it calls (in its own module or in other modules of
the user's project), on the classes it uses, and on the packages it imports.  This
module follows what a function can reach, by reading its bytecode:

- a global name it loads counts by the value it has now (so a constant computed at run
  time from ``sys.argv`` or an environment variable counts too), except a name the code
  itself changes (``global x; x = ...``, ``x[key] = ...``, ``x.attr = ...``,
  ``x.append(...)``): its value is then the code's own state (a memo, an object built
  once) and says what ran before in this process, so it counts by the source file of
  its module instead, where its first value is written;
- functions and classes of *local* modules (neither the standard library nor installed
  in a site-packages directory) count by their code, transitively; a class by its bases,
  the code of its methods and its class attributes;
- ``module.name`` chains on a local module resolve to the names used, so only what is
  reached counts, not the whole module (editing an unrelated line of a driver script
  leaves its operations' keys alone); a local module used as a whole (passed around,
  imported inside a function) counts by its source file;
- a global, default, closure variable or class attribute with no content to hash (a
  module-level lock, an open file) counts by the source file of its module, whose text
  makes it (arguments with no content are an error instead: they differ from call to
  call, while what code reads comes from its text);
- installed packages count by their distribution's version, the standard library and
  builtins by name.

The encoding of values is :mod:`wfl_like.autoparallelize.resume.fingerprint`'s; its feeder is
passed in (``feed(hasher, value, seen)``) so that the two modules need not import each other.
"""

import builtins
import collections
import dis
import functools
import hashlib
import importlib.metadata
import importlib.util
import logging
import site
import sys
import sysconfig
import types
from pathlib import Path

log = logging.getLogger("wfl_like.cache")

LOCAL, INSTALLED, STDLIB = "local", "installed", "stdlib"

# class attributes that the interpreter keeps for its own bookkeeping: they say nothing
# about what the class computes (and some, like ABC caches, change as the class is used)
_CLASS_BOOKKEEPING = frozenset({"__dict__", "__weakref__", "__module__", "__qualname__", "__doc__",
                                "_abc_impl", "__annotations__"})

# methods by which code changes a container it loaded: the container is then its state
_MUTATORS = frozenset({"append", "extend", "insert", "pop", "popitem", "remove", "clear", "update",
                       "setdefault", "add", "discard", "__setitem__", "__delitem__", "appendleft",
                       "extendleft", "popleft", "intersection_update", "difference_update",
                       "symmetric_difference_update", "sort", "reverse"})

_GLOBAL_LOADS = frozenset({"LOAD_GLOBAL", "LOAD_NAME"})
_ATTRIBUTE_LOADS = frozenset({"LOAD_ATTR", "LOAD_METHOD"})
_GLOBAL_WRITES = frozenset({"STORE_GLOBAL", "DELETE_GLOBAL"})
_ITEM_WRITES = frozenset({"STORE_SUBSCR", "DELETE_SUBSCR"})
_ATTRIBUTE_WRITES = frozenset({"STORE_ATTR", "DELETE_ATTR"})


class Unfingerprintable(TypeError):
    """A value with no content to hash (a lock, an open file), and where it was found.

    ``path`` lists the steps from the outermost value down to it, innermost first while
    the error travels up; ``holder`` is the class of the nearest object holding it.
    """

    def __init__(self, value, reason):
        self.type_name = f"{type(value).__module__}.{type(value).__qualname__}"
        self.reason = reason
        self.path = []
        self.holder = None
        super().__init__(self.type_name)

    def where(self):
        return "".join(reversed(self.path))


class Walk(set):
    """What one key has fed (ids: nothing is fed twice, loops end) and the code still to feed.

    The bodies of functions and classes are fed breadth first from a queue, not by
    recursion, so that however long a chain of helpers the code reaches, the stack does
    not run out; the order is the same every time, so the key is too.
    """

    def __init__(self):
        super().__init__()
        self._pending = collections.deque()
        # the objects whose ids are held, kept alive for the length of the walk: a
        # temporary (made by __reduce_ex__) freed midway could hand its id to another
        # object, which would then be taken as already fed
        self._alive = []
        # (module, name) of module-level values that set-up code (the initializer) assigns
        # or changes: the op reads them as its own state, not as constants
        self.set_up = set()

    def note_set_up(self, func):
        """Count the module-level values ``func`` (an initializer) writes as state."""
        code = getattr(func, "__code__", None)
        if code is None:
            return
        _, written, _ = code_reads(code)
        module = func.__globals__.get("__name__")
        self.set_up.update((module, name) for name in written)

    def visit(self, obj):
        """Whether ``obj`` is met for the first time (then it is marked as met)."""
        if id(obj) in self:
            return False
        self.add(id(obj))
        self._alive.append(obj)
        return True

    def defer(self, work):
        self._pending.append(work)

    def drain(self):
        while self._pending:
            self._pending.popleft()()


def feed_step(feed, hasher, value, seen, step):
    """``feed`` a value found at ``step`` (``[0]``, ``.name``), so that an error can say where."""
    try:
        feed(hasher, value, seen)
    except Unfingerprintable as error:
        error.path.append(step)
        raise


# --- where a module comes from -------------------------------------------------------------

@functools.lru_cache(maxsize=None)
def _site_directories():
    directories = set(site.getsitepackages()) | {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    if site.ENABLE_USER_SITE:
        directories.add(site.getusersitepackages())
    directories |= {entry for entry in sys.path if Path(entry).name in ("site-packages", "dist-packages")}
    return tuple(sorted(Path(d).resolve() for d in directories if d))


@functools.lru_cache(maxsize=None)
def _stdlib_directories():
    paths = sysconfig.get_paths()
    return tuple(sorted({Path(paths["stdlib"]).resolve(), Path(paths["platstdlib"]).resolve()}))


def _module_file(module_name):
    module = sys.modules.get(module_name)
    if module is not None:
        location = getattr(module, "__file__", None)
        if location is None and getattr(module, "__path__", None):
            location = next(iter(module.__path__), None)      # a namespace package
        return location
    try:
        spec = importlib.util.find_spec(module_name)
    except (ImportError, ValueError):
        return None
    return spec.origin if spec is not None and spec.has_location else None


@functools.lru_cache(maxsize=None)
def module_origin(module_name):
    """``LOCAL``, ``INSTALLED`` or ``STDLIB`` for a module name (cached per process)."""
    if not module_name:
        return LOCAL
    location = _module_file(module_name)
    if location is None:
        # compiled into the interpreter, or no file at all (an interactive __main__)
        top = module_name.partition(".")[0]
        return STDLIB if module_name == "builtins" or top in sys.stdlib_module_names else LOCAL
    # by where its file is, not by its name: a user's own code.py or test.py is theirs
    resolved = Path(location).resolve()
    if any(resolved.is_relative_to(directory) for directory in _site_directories()):
        return INSTALLED
    if any(resolved.is_relative_to(directory) for directory in _stdlib_directories()):
        return STDLIB
    return LOCAL


@functools.lru_cache(maxsize=None)
def _distributions_by_package():
    return importlib.metadata.packages_distributions()


@functools.lru_cache(maxsize=None)
def installed_version(module_name):
    """The versions of the distributions that provide an installed module's package, e.g.
    ``"ase==3.23.0"``; failing that its ``__version__``, failing that its file's hash."""
    top = module_name.partition(".")[0]
    versions = []
    for distribution in sorted(set(_distributions_by_package().get(top, ()))):
        try:
            versions.append(f"{distribution}=={importlib.metadata.version(distribution)}")
        except importlib.metadata.PackageNotFoundError:
            continue
    if versions:
        return ";".join(versions)
    version = getattr(sys.modules.get(top), "__version__", None)
    if isinstance(version, str):
        return f"{top}=={version}"
    return f"file:{source_digest(module_name)}"


def source_digest(module_name):
    """A hash of a module's source file ("" when it has none, e.g. an interactive ``__main__``).

    Not cached: a module rewritten and reloaded in this process counts by its new text.
    """
    location = _module_file(module_name) if module_name else None
    if location is None or not Path(location).is_file():
        return ""
    return hashlib.blake2b(Path(location).read_bytes(), digest_size=20).hexdigest()


def _feed_text(hasher, text):
    data = text.encode("utf-8", "surrogatepass")
    hasher.update(len(data).to_bytes(8, "little"))
    hasher.update(data)


def feed_module(hasher, module):
    """A module as a value: the standard library by name, an installed package by version,
    a local module by its source file (its names used cannot be told apart)."""
    name = module.__name__
    _feed_text(hasher, name)
    _feed_origin(hasher, name)


def _feed_origin(hasher, name):
    """Where module ``name`` comes from, and what it counts by there: an installed
    package's version, a local module's source, the standard library's name alone."""
    origin = module_origin(name)
    _feed_text(hasher, origin)
    if origin == INSTALLED:
        _feed_text(hasher, installed_version(name))
    elif origin == LOCAL:
        _feed_text(hasher, source_digest(name))


# --- what code reads -----------------------------------------------------------------------

@functools.lru_cache(maxsize=4096)
def code_reads(code):
    """``(chains, written, imported)`` of a code object and the code nested in it.

    ``chains``: the ``name.attr.attr`` chains of global names it loads (a frozenset of
    tuples); ``written``: global names it assigns or whose object it changes in place;
    ``imported``: ``(name, level)`` of the modules it imports itself.
    """
    chains, written, imported = set(), set(), set()
    _scan(code, chains, written, imported)
    return frozenset(chains), frozenset(written), frozenset(imported)


def _scan(code, chains, written, imported):
    instructions = list(dis.get_instructions(code))
    for index, instruction in enumerate(instructions):
        name = instruction.opname
        if name in _GLOBAL_LOADS:
            chains.add(_chain_from(instructions, index))
        elif name in _GLOBAL_WRITES:
            written.add(instruction.argval)
        elif name == "IMPORT_NAME":
            level = instructions[index - 2].argval if index >= 2 else 0
            imported.add((instruction.argval, level if isinstance(level, int) else 0))
        target = _changed_operand(instruction)
        if target is not None:
            root = _root_global(instructions, index, target)
            if root is not None:
                written.add(root)
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            _scan(const, chains, written, imported)


def _chain_from(instructions, index):
    """The ``name.attr.attr`` chain loaded from ``index`` (a global load) on."""
    chain = [instructions[index].argval]
    for instruction in instructions[index + 1:]:
        if instruction.opname not in _ATTRIBUTE_LOADS:
            break
        chain.append(instruction.argval)
    return tuple(chain)


def _changed_operand(instruction):
    """Which stack slot (0: the top) holds the object an instruction changes, or None:
    ``x[k] = v``, ``del x[k]``, ``x.a = v``, ``del x.a``, and ``x.append`` (a mutator)."""
    if instruction.opname in _ITEM_WRITES:
        return 1
    if instruction.opname in _ATTRIBUTE_WRITES:
        return 0
    if instruction.opname in _ATTRIBUTE_LOADS and instruction.argval in _MUTATORS:
        return 0
    return None


def _root_global(instructions, index, position):
    """The global name whose object (or an item or attribute of it) sits in stack slot
    ``position`` just before ``instructions[index]``, or None (a local, a call's result,
    or code too involved to follow: then the value keeps counting, the safe side)."""
    for instruction in reversed(instructions[:index]):
        if instruction.is_jump_target or instruction.opcode in _JUMPS:
            return None
        name = instruction.opname
        if name == "SWAP":
            depth = instruction.arg - 1
            position = depth if position == 0 else 0 if position == depth else position
            continue
        if name == "COPY" and position == 0:
            position = instruction.arg - 1
            continue
        effect = dis.stack_effect(instruction.opcode, instruction.arg)
        pushes = _pushes(instruction)
        if position < pushes:
            if position != 0:
                return None
            if name in _GLOBAL_LOADS:
                return instruction.argval
            if name in _ATTRIBUTE_LOADS:
                continue             # its object was on top just before it
            if name == "BINARY_SUBSCR":
                position = 1         # its container was below the key
                continue
            return None
        position -= effect
    return None


def _pushes(instruction):
    if instruction.opname in _NO_PUSH or instruction.opname.startswith(("STORE_", "DELETE_", "POP_")):
        return 0
    if instruction.opname == "LOAD_METHOD" or (instruction.opname == "LOAD_GLOBAL" and instruction.arg & 1):
        return 2
    return 1


_JUMPS = frozenset(dis.hasjrel) | frozenset(dis.hasjabs)
_NO_PUSH = frozenset({"PRECALL", "KW_NAMES", "NOP", "RESUME", "EXTENDED_ARG", "CACHE", "RETURN_VALUE"})


# --- functions and classes -----------------------------------------------------------------

def _defining_module(func):
    """The module whose code this is: its globals say it even when ``functools.wraps``
    copied another function's ``__module__`` onto a wrapper."""
    namespace = getattr(func, "__globals__", None)
    if isinstance(namespace, dict) and isinstance(namespace.get("__name__"), str):
        return namespace["__name__"]
    return getattr(func, "__module__", None) or ""


def feed_function(feed, hasher, func, seen):
    """A function by name; local code also by its code, defaults, closure and what it reads;
    library code by its package's version (and the function it wraps, if any)."""
    if isinstance(func, types.MethodType):
        feed_step(feed, hasher, func.__func__, seen, f".{func.__name__}")
        feed_step(feed, hasher, func.__self__, seen, f".{func.__name__}.__self__")
        return
    module = _defining_module(func)
    qualname = getattr(func, "__qualname__", None) or getattr(func, "__name__", repr(func))
    _feed_text(hasher, f"{module}.{qualname}")
    code = getattr(func, "__code__", None)
    if code is None or module_origin(module) != LOCAL:
        _feed_library_callable(feed, hasher, func, module, seen)
        return
    if not seen.visit(func):
        return          # fed already in this key: no loop through recursive helpers
    seen.defer(lambda: _feed_function_body(feed, hasher, func, module, seen))


def _feed_function_body(feed, hasher, func, module, seen):
    feed_code(feed, hasher, func.__code__, seen)
    feed_or_source(feed, hasher, func.__defaults__, seen, module)
    feed_or_source(feed, hasher, func.__kwdefaults__, seen, module)
    _feed_closure(feed, hasher, func, module, seen)
    _feed_reads(feed, hasher, func.__code__, func.__globals__, seen)


def _feed_library_callable(feed, hasher, func, module, seen):
    origin = module_origin(module)
    _feed_text(hasher, origin)
    if origin == INSTALLED:
        _feed_text(hasher, installed_version(module))
    elif origin == LOCAL:
        _feed_text(hasher, source_digest(module))     # compiled code of the user's own: its file
    bound_to = getattr(func, "__self__", None)
    if bound_to is not None and not isinstance(bound_to, types.ModuleType):
        # a builtin method bound to a value (``some_dict.get``): the value counts
        feed_step(feed, hasher, bound_to, seen, f".{getattr(func, '__name__', '')}.__self__")
    wrapped = getattr(func, "__wrapped__", None)
    if wrapped is not None:
        feed_step(feed, hasher, wrapped, seen, ".__wrapped__")


def _feed_closure(feed, hasher, func, module, seen):
    cells = func.__closure__ or ()
    names = func.__code__.co_freevars
    for name, cell in zip(names, cells):
        try:
            contents = cell.cell_contents
        except ValueError:
            contents = _EMPTY_CELL
        _feed_text(hasher, name)
        feed_or_source(feed, hasher, contents, seen, module)


_EMPTY_CELL = "<empty closure cell>"


def feed_code(feed, hasher, code, seen):
    """A code object without its line numbers and file name (moving a function leaves it
    alone), with its constants and nested code."""
    for part in (code.co_code, code.co_exceptiontable):
        hasher.update(len(part).to_bytes(8, "little"))
        hasher.update(part)
    feed(hasher, [code.co_argcount, code.co_posonlyargcount, code.co_kwonlyargcount, code.co_flags,
                  list(code.co_names), list(code.co_varnames), list(code.co_freevars), list(code.co_cellvars)],
         seen)
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            feed_code(feed, hasher, const, seen)
        else:
            feed(hasher, const, seen)


def _feed_reads(feed, hasher, code, namespace, seen):
    chains, written, imported = code_reads(code)
    module = namespace.get("__name__")
    if chains:
        # once per code object, not per name it reads: the digest reads the module's file
        written = written | _written_in_module(module, source_digest(module))
    for chain in sorted(chains):
        _feed_text(hasher, ".".join(chain))
        if chain[0] in written or (module, chain[0]) in seen.set_up:
            # the code's own state (a memo, an object built once): its current value says
            # what ran before in this process; its first value is in the text of the module
            # it lives in (``helpers.CACHE`` lives in helpers, not in the op's module)
            _feed_text(hasher, "<its own state>")
            _feed_text(hasher, source_digest(_home_module(chain, namespace, module)))
            continue
        feed_or_source(lambda h, v, s, chain=chain: _feed_chain(feed, h, chain, v, s), hasher, namespace, seen, module)
    for name, level in sorted(imported):
        _feed_imported(hasher, name, level, namespace)


@functools.lru_cache(maxsize=512)
def _written_in_module(module_name, digest):
    """Global names of a local module that some function or method of it assigns or changes in
    place: state (a cache filled by one function and read by another), not a constant.

    Keyed by the module's source digest, so that a module rewritten and reloaded is scanned again.
    """
    module = sys.modules.get(module_name) if module_name else None
    if module is None or not digest or module_origin(module_name) != LOCAL:
        return frozenset()
    names = set()
    for value in list(vars(module).values()):
        for func in _functions_defined_in(value, module_name):
            names |= code_reads(func.__code__)[1]
    return frozenset(names)


def _functions_defined_in(value, module_name):
    """The functions of a module-level value defined in ``module_name``: itself, or a class's methods."""
    if isinstance(value, types.FunctionType) and value.__module__ == module_name:
        return [value]
    if isinstance(value, type) and value.__module__ == module_name:
        found = []
        for member in vars(value).values():
            unwrapped = _unwrap_descriptor(member)
            for func in unwrapped if isinstance(unwrapped, list) else [unwrapped]:
                if isinstance(func, types.FunctionType):
                    found.append(func)
        return found
    return []


def _home_module(chain, namespace, default):
    """The module whose text makes what a ``name.attr...`` chain reaches: through modules
    attribute by attribute, then a class's or a function's own module."""
    home = default
    value = namespace.get(chain[0])
    for attribute in chain[1:] + (None,):
        if isinstance(value, types.ModuleType):
            home = value.__name__
        else:
            if isinstance(value, (type, types.FunctionType)):
                home = getattr(value, "__module__", None) or home
            break
        if attribute is None:
            break
        value = getattr(value, attribute, None)
    return home


def feed_or_source(feed, hasher, value, seen, module):
    """Part of some code (a global it reads, a default, a closure variable, a class
    attribute) by value; one with no content to hash (a module-level lock, an open file)
    by the source file of ``module``, whose text makes it.

    What was fed before the value turned out to have no content stays fed (the class of
    an object, its first attributes): the same values stop at the same place every time.
    """
    try:
        feed(hasher, value, seen)
    except Unfingerprintable as error:
        log.debug("a %s in what code of %s reads has no content to hash; it counts by the module's source",
                  error.type_name, module)
        _feed_text(hasher, "<no content: by the source of its module>")
        _feed_text(hasher, source_digest(module))


def _feed_chain(feed, hasher, chain, namespace, seen):
    """The value a ``name.attr...`` chain reaches: through local modules attribute by
    attribute, so that only the names used count."""
    name = chain[0]
    if name in namespace:
        value = namespace[name]
    elif hasattr(builtins, name):
        _feed_text(hasher, "<builtin>")
        return
    else:
        _feed_text(hasher, "<unbound>")
        return
    home = namespace.get("__name__")
    for attribute in chain[1:]:
        if not (isinstance(value, types.ModuleType) and module_origin(value.__name__) == LOCAL):
            break
        _feed_text(hasher, f"{value.__name__}.{attribute}")
        if attribute not in vars(value):
            # not there yet (a submodule imported later, a lazy module __getattr__): what
            # it will be cannot be told, so the module's text counts
            _feed_text(hasher, source_digest(value.__name__))
            return
        home = value.__name__
        value = vars(value)[attribute]
    if _holds_state(value):
        # an object whose own methods change it (a memo of built calculators): its current
        # contents say what ran before in this process; what makes it is its module's text
        _feed_text(hasher, "<its own state>")
        _feed_text(hasher, source_digest(home))
        return
    feed(hasher, value, seen)


# methods that build an object, whose writes to it make its first state rather than change it
_BUILDERS = frozenset({"__init__", "__new__", "__post_init__", "__setstate__", "__init_subclass__"})


def _holds_state(value):
    """Whether ``value`` is an instance of a local class some method of which (other than its
    constructors) changes the instance: assigns an attribute, or changes one in place."""
    cls = type(value)
    if isinstance(value, (type, types.ModuleType, types.FunctionType)) or module_origin(cls.__module__) != LOCAL:
        return False
    return _class_changes_self(cls)


@functools.lru_cache(maxsize=512)
def _class_changes_self(cls):
    for klass in cls.__mro__:
        if klass is object or module_origin(klass.__module__) != LOCAL:
            continue
        for name, member in vars(klass).items():
            if name in _BUILDERS:
                continue
            unwrapped = _unwrap_descriptor(member)
            for func in unwrapped if isinstance(unwrapped, list) else [unwrapped]:
                if isinstance(func, types.FunctionType) and _changes_first_argument(func.__code__):
                    return True
    return False


def _changes_first_argument(code):
    """Whether the code assigns an attribute of its first argument (``self.x = ...``), or
    changes one in place (``self.x[k] = ...``, ``self.x.append(...)``)."""
    if code.co_argcount == 0:
        return False
    instructions = [i for i in dis.get_instructions(code) if i.opname not in ("CACHE", "EXTENDED_ARG", "NOP")]
    self_name = code.co_varnames[0]
    for k, instruction in enumerate(instructions):
        if instruction.opname != "LOAD_FAST" or instruction.argval != self_name:
            continue
        following = instructions[k + 1:k + 5]
        if following and following[0].opname in ("STORE_ATTR", "DELETE_ATTR"):
            return True
        if len(following) >= 2 and following[0].opname == "LOAD_ATTR":
            rest = following[1:]
            if any(i.opname in ("STORE_SUBSCR", "DELETE_SUBSCR") for i in rest[:3]):
                return True
            if rest[0].opname in ("LOAD_METHOD", "LOAD_ATTR") and rest[0].argval in _MUTATORS:
                return True
    return False


def _feed_imported(hasher, name, level, namespace):
    """A module imported inside a function: by origin and version or source (it may not
    have been imported yet, so what is used of it cannot be told)."""
    try:
        absolute = importlib.util.resolve_name("." * level + name, namespace.get("__package__")) if level else name
    except (ImportError, ValueError):
        absolute = name
    _feed_text(hasher, f"<import {absolute}>")
    _feed_origin(hasher, absolute)


def feed_class(feed, hasher, cls, seen):
    """A class by name; a local one also by its bases, the code of its methods and its
    class attributes; an installed one by its package's version."""
    module = getattr(cls, "__module__", "") or ""
    _feed_text(hasher, f"{module}.{cls.__qualname__}")
    origin = module_origin(module)
    _feed_text(hasher, origin)
    if origin == INSTALLED:
        _feed_text(hasher, installed_version(module))
    if origin != LOCAL or not seen.visit(cls):
        return
    seen.defer(lambda: _feed_class_body(feed, hasher, cls, module, seen))


def _feed_class_body(feed, hasher, cls, module, seen):
    if not str(_module_file(module) or "").endswith(".py"):
        _feed_text(hasher, source_digest(module))     # compiled code of the user's own: its file
    for base in cls.__bases__:
        feed(hasher, base, seen)
    for name, member in sorted(vars(cls).items()):
        if name in _CLASS_BOOKKEEPING:
            continue
        _feed_text(hasher, name)
        feed_or_source(feed, hasher, _unwrap_descriptor(member), seen, module)


def _unwrap_descriptor(member):
    """What a class attribute runs: a static/class method's function, a property's accessors."""
    if isinstance(member, (staticmethod, classmethod)):
        return member.__func__
    if isinstance(member, property):
        return [member.fget, member.fset, member.fdel]
    if isinstance(member, functools.cached_property):
        return member.func
    if isinstance(member, (types.MemberDescriptorType, types.GetSetDescriptorType)):
        return member.__name__         # a __slots__ entry: its name is all there is
    return member
