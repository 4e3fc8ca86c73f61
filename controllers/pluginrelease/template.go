package pluginrelease

import (
	"errors"
	"fmt"
	"reflect"
	"regexp"
	"regexp/syntax"
	"strconv"
	"strings"
	"text/template"
	"text/template/parse"
	"time"

	"github.com/Masterminds/sprig/v3"
)

// valuesTemplate is written by whoever may create a PluginRelease in a namespace, and rendered by
// the manager for every target on every pass: it must neither reach outside the template nor let
// one author stall or exhaust the manager. So:
//   - only pure, deterministic functions (a random or clock-dependent value would redeploy every
//     target on every pass; env, DNS and files reach outside);
//   - no define, template or block (recursion), no range over an integer, and a budget of range
//     iterations across the whole render;
//   - every function's arguments and result are capped by their whole size (strings, and lists
//     and dicts with all they hold), and so are its integer arguments (widths, counts), so no
//     single call allocates much and no value grows past the cap by nesting;
//   - no function changes a value in place (set, unset, merge): values are never shared into
//     themselves, so none is cyclic (printing a cyclic map overflows the stack, which kills the
//     process);
//   - a regular expression's cost (its program size times its input) is bounded;
//   - the render has a deadline, checked by every function call and every range, so a render
//     that runs past it stops there instead of running on in the background.
const (
	maxTemplateIterations = 100000
	maxFuncBytes          = 256 << 10
	maxFuncInt            = 10000
	templateTimeout       = 2 * time.Second
)

// allowedFuncs are the Sprig functions a valuesTemplate may call.
var allowedFuncs = []string{
	// strings
	"trim", "trimAll", "trimPrefix", "trimSuffix", "upper", "lower", "title", "untitle", "substr",
	"trunc", "abbrev", "initials", "wrap", "contains", "hasPrefix", "hasSuffix", "quote", "squote",
	"cat", "indent", "nindent", "replace", "plural", "snakecase", "camelcase", "kebabcase", "swapcase",
	"toString", "toStrings", "join", "split", "splitList", "splitn", "sortAlpha", "regexMatch",
	"regexFind", "regexFindAll", "regexReplaceAll", "regexReplaceAllLiteral", "regexSplit", "regexQuoteMeta",
	// defaults and logic
	"default", "empty", "coalesce", "all", "any", "ternary", "fail", "required", "typeOf", "kindOf",
	"typeIs", "kindIs", "deepEqual",
	// numbers
	"add", "add1", "sub", "mul", "div", "mod", "max", "min", "floor", "ceil", "round", "int", "int64",
	"float64", "atoi", "toDecimal",
	// lists and dicts
	"list", "first", "last", "rest", "initial", "append", "prepend", "concat", "reverse", "uniq",
	"without", "has", "compact", "slice", "chunk", "dict", "get", "hasKey", "pluck",
	"keys", "pick", "omit", "values", "dig", "deepCopy",
	// encodings and digests
	"b64enc", "b64dec", "b32enc", "b32dec", "toJson", "toPrettyJson", "toRawJson", "fromJson",
	"sha1sum", "sha256sum", "adler32sum",
	// versions
	"semver", "semverCompare",
}

var printfWidth = regexp.MustCompile(`%[-+# 0]*([0-9]+|\*)?(\.([0-9]+|\*))?`)

// renderBudget is one render's shared allowance. One render runs on one goroutine.
type renderBudget struct {
	iterations int
	// deadline: past it, every function call and range fails (zero: none).
	deadline time.Time
}

var (
	errIterations = fmt.Errorf("the template loops more than %d times in all", maxTemplateIterations)
	errRangeInt   = errors.New("range over an integer is not allowed; range over a list or a map")
	errDeadline   = fmt.Errorf("the template takes longer than %s to render", templateTimeout)
)

func (b *renderBudget) expired() bool {
	return b != nil && !b.deadline.IsZero() && time.Now().After(b.deadline)
}

// templateFuncs returns the allowed functions, capped, sharing b.
func templateFuncs(b *renderBudget) template.FuncMap {
	all := sprig.TxtFuncMap()
	f := template.FuncMap{}
	for _, name := range allowedFuncs {
		if fn, ok := all[name]; ok {
			f[name] = capped(name, fn, b)
		}
	}
	// The builtins that build strings, capped the same way (and printf's widths).
	f["printf"] = func(format string, args ...any) (string, error) {
		if b.expired() {
			return "", errDeadline
		}
		widths := 0
		for _, m := range printfWidth.FindAllStringSubmatch(format, -1) {
			for _, n := range []string{m[1], m[3]} {
				if n == "*" || len(n) > 4 {
					return "", fmt.Errorf("printf: widths and precisions are at most 9999")
				}
				if w, err := strconv.Atoi(n); err == nil {
					widths += w
				}
			}
		}
		if widths > maxFuncBytes {
			return "", fmt.Errorf("printf: the result would be larger than %d bytes", maxFuncBytes)
		}
		if err := checkArgs("printf", append([]any{format}, args...)); err != nil {
			return "", err
		}
		return checkResult("printf", fmt.Sprintf(format, args...))
	}
	f["print"] = func(args ...any) (string, error) {
		if b.expired() {
			return "", errDeadline
		}
		if err := checkArgs("print", args); err != nil {
			return "", err
		}
		return checkResult("print", fmt.Sprint(args...))
	}
	f["println"] = func(args ...any) (string, error) {
		if b.expired() {
			return "", errDeadline
		}
		if err := checkArgs("println", args); err != nil {
			return "", err
		}
		return checkResult("println", fmt.Sprintln(args...))
	}
	// Inserted into every range's pipeline by guardRanges.
	f["paddockRange"] = func(v any) (any, error) {
		if b.expired() {
			return nil, errDeadline
		}
		rv := reflect.ValueOf(v)
		switch rv.Kind() {
		case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64, reflect.Uint, reflect.Uint8,
			reflect.Uint16, reflect.Uint32, reflect.Uint64, reflect.Uintptr, reflect.Chan, reflect.Func:
			return nil, errRangeInt
		case reflect.Slice, reflect.Array, reflect.Map, reflect.String:
			b.iterations += rv.Len()
			if b.iterations > maxTemplateIterations {
				return nil, errIterations
			}
		}
		return v, nil
	}
	return f
}

func checkResult(name, s string) (string, error) {
	if len(s) > maxFuncBytes {
		return "", fmt.Errorf("%s: the result is larger than %d bytes", name, maxFuncBytes)
	}
	return s, nil
}

// maxListLen bounds every list a template builds or passes.
const maxListLen = 10000

// weigh is the size of v with all it holds (string bytes, and 8 for every element), counted up
// to just past limit.
func weigh(v reflect.Value, limit int) int {
	for v.IsValid() && (v.Kind() == reflect.Interface || v.Kind() == reflect.Pointer) {
		if v.IsNil() {
			return 8
		}
		v = v.Elem()
	}
	if !v.IsValid() {
		return 8
	}
	switch v.Kind() {
	case reflect.String:
		return 8 + v.Len()
	case reflect.Slice, reflect.Array:
		n := 8
		for i := 0; i < v.Len() && n <= limit; i++ {
			n += weigh(v.Index(i), limit-n)
		}
		return n
	case reflect.Map:
		n := 8
		it := v.MapRange()
		for it.Next() && n <= limit {
			n += weigh(it.Key(), limit-n)
			n += weigh(it.Value(), limit-n)
		}
		return n
	case reflect.Struct:
		n := 8
		for i := 0; i < v.NumField() && n <= limit; i++ {
			if v.Type().Field(i).IsExported() {
				n += weigh(v.Field(i), limit-n)
			}
		}
		return n
	}
	return 8
}

func checkArgs(name string, args []any) error {
	total := 0
	for _, a := range args {
		total += weigh(reflect.ValueOf(a), maxFuncBytes-total)
		if total > maxFuncBytes {
			return fmt.Errorf("%s: arguments larger than %d bytes", name, maxFuncBytes)
		}
		switch x := a.(type) {
		case []any:
			if len(x) > maxListLen {
				return fmt.Errorf("%s: a list of more than %d elements", name, maxListLen)
			}
		case []string:
			if len(x) > maxListLen {
				return fmt.Errorf("%s: a list of more than %d elements", name, maxListLen)
			}
		}
	}
	return estimate(name, args)
}

func asInt(v any) (int, bool) {
	switch x := v.(type) {
	case int:
		return x, true
	case int64:
		return int(x), true
	}
	return 0, false
}

// estimate refuses the calls whose result would outgrow maxFuncBytes, before they allocate it:
// the functions that multiply their input.
func estimate(name string, args []any) error {
	tooBig := fmt.Errorf("%s: the result would be larger than %d bytes", name, maxFuncBytes)
	switch name {
	case "indent", "nindent":
		if len(args) == 2 {
			n, _ := asInt(args[0])
			s, _ := args[1].(string)
			if n < 0 || n > maxFuncInt {
				return fmt.Errorf("%s: number %d is out of range for a template", name, n)
			}
			if len(s)+n*(strings.Count(s, "\n")+1) > maxFuncBytes {
				return tooBig
			}
		}
	case "replace":
		if len(args) == 3 {
			old, _ := args[0].(string)
			nw, _ := args[1].(string)
			s, _ := args[2].(string)
			if old == "" {
				return fmt.Errorf("replace: the string to replace is empty")
			}
			if len(s)+strings.Count(s, old)*max(len(nw)-len(old), 0) > maxFuncBytes {
				return tooBig
			}
		}
	}
	if strings.HasPrefix(name, "regex") && name != "regexQuoteMeta" && len(args) >= 2 {
		pat, _ := args[0].(string)
		s, _ := args[1].(string)
		if err := regexCost(name, pat, s); err != nil {
			return err
		}
	}
	switch name {
	case "regexReplaceAll", "regexReplaceAllLiteral", "regexFindAll", "regexSplit":
		if len(args) >= 1 {
			if pat, ok := args[0].(string); ok {
				re, err := regexp.Compile(pat)
				if err == nil && re.MatchString("") {
					return fmt.Errorf("%s: the pattern matches the empty string", name)
				}
			}
		}
		if name == "regexReplaceAll" || name == "regexReplaceAllLiteral" {
			if len(args) == 3 {
				s, _ := args[1].(string)
				rep, _ := args[2].(string)
				if len(rep) > 0 && len(s)*(len(rep)+1) > maxFuncBytes {
					return tooBig
				}
			}
		}
	}
	return nil
}

// maxRegexCost bounds a regular expression's program size times the length of its input, which
// bounds the time of a match (Go's regexp is linear in both): about a tenth of a second.
const (
	maxRegexCost    = 2 << 20
	maxRegexPattern = 1024
)

func regexCost(name, pat, s string) error {
	if len(pat) > maxRegexPattern {
		return fmt.Errorf("%s: the pattern is longer than %d bytes", name, maxRegexPattern)
	}
	re, err := syntax.Parse(pat, syntax.Perl)
	if err != nil {
		return nil // the function itself reports it
	}
	prog, err := syntax.Compile(re.Simplify())
	if err != nil {
		return nil
	}
	if len(prog.Inst)*(len(s)+1) > maxRegexCost {
		return fmt.Errorf("%s: the pattern is too complex for an input of %d bytes (make one of them smaller)", name, len(s))
	}
	return nil
}

var errorType = reflect.TypeOf((*error)(nil)).Elem()

// capped wraps fn (any signature) with checkArgs and, for string results, checkResult. The
// wrapper returns an error as its last result, as text/template expects.
func capped(name string, fn any, b *renderBudget) any {
	fv := reflect.ValueOf(fn)
	ft := fv.Type()
	in := make([]reflect.Type, ft.NumIn())
	for i := range in {
		in[i] = ft.In(i)
	}
	var out []reflect.Type
	hasErr := ft.NumOut() == 2 && ft.Out(1) == errorType
	if ft.NumOut() >= 1 {
		out = append(out, ft.Out(0))
	}
	out = append(out, errorType)
	wt := reflect.FuncOf(in, out, ft.IsVariadic())
	return reflect.MakeFunc(wt, func(args []reflect.Value) []reflect.Value {
		vals := make([]any, 0, len(args))
		for i, a := range args {
			if ft.IsVariadic() && i == len(args)-1 {
				for j := 0; j < a.Len(); j++ {
					vals = append(vals, a.Index(j).Interface())
				}
				continue
			}
			vals = append(vals, a.Interface())
		}
		fail := func(err error) []reflect.Value {
			res := []reflect.Value{reflect.Zero(out[0])}
			if len(out) == 1 {
				res = nil
			}
			return append(res, reflect.ValueOf(&err).Elem())
		}
		if b.expired() {
			return fail(errDeadline)
		}
		if err := checkArgs(name, vals); err != nil {
			return fail(err)
		}
		var res []reflect.Value
		if ft.IsVariadic() {
			res = fv.CallSlice(args)
		} else {
			res = fv.Call(args)
		}
		if hasErr && !res[1].IsNil() {
			return fail(res[1].Interface().(error))
		}
		if len(res) > 0 {
			switch rv := res[0]; rv.Kind() {
			case reflect.String:
				if _, err := checkResult(name, rv.String()); err != nil {
					return fail(err)
				}
			case reflect.Slice, reflect.Map:
				if rv.Len() > maxListLen {
					return fail(fmt.Errorf("%s: a result of more than %d elements", name, maxListLen))
				}
			case reflect.Interface:
				if e := rv.Elem(); e.IsValid() && (e.Kind() == reflect.Slice || e.Kind() == reflect.Map) && e.Len() > maxListLen {
					return fail(fmt.Errorf("%s: a result of more than %d elements", name, maxListLen))
				}
			}
			if weigh(res[0], maxFuncBytes) > maxFuncBytes {
				return fail(fmt.Errorf("%s: the result is larger than %d bytes", name, maxFuncBytes))
			}
		}
		if len(out) == 1 {
			return []reflect.Value{reflect.Zero(errorType)}
		}
		return []reflect.Value{res[0], reflect.Zero(errorType)}
	}).Interface()
}

// parseValuesTemplate parses text with the allowed functions, refuses what it must not do, and
// guards its ranges.
func parseValuesTemplate(text string, b *renderBudget) (*template.Template, error) {
	t, err := template.New("valuesTemplate").Funcs(templateFuncs(b)).Option("missingkey=zero").Parse(text)
	if err != nil {
		return nil, err
	}
	if len(t.Templates()) > 1 {
		return nil, errors.New("define and block are not allowed")
	}
	if t.Tree == nil || t.Tree.Root == nil {
		return t, nil
	}
	if err := guardRanges(t.Tree.Root); err != nil {
		return nil, err
	}
	return t, nil
}

// guardRanges refuses template calls and pipes every range's value through paddockRange.
func guardRanges(n parse.Node) error {
	switch x := n.(type) {
	case *parse.ListNode:
		if x == nil {
			return nil
		}
		for _, c := range x.Nodes {
			if err := guardRanges(c); err != nil {
				return err
			}
		}
	case *parse.TemplateNode:
		return errors.New("template calls are not allowed")
	case *parse.RangeNode:
		x.Pipe.Cmds = append(x.Pipe.Cmds, &parse.CommandNode{NodeType: parse.NodeCommand, Pos: x.Pipe.Pos,
			Args: []parse.Node{parse.NewIdentifier("paddockRange").SetTree(nil).SetPos(x.Pipe.Pos)}})
		if err := guardRanges(x.List); err != nil {
			return err
		}
		return guardRanges(x.ElseList)
	case *parse.IfNode:
		if err := guardRanges(x.List); err != nil {
			return err
		}
		return guardRanges(x.ElseList)
	case *parse.WithNode:
		if err := guardRanges(x.List); err != nil {
			return err
		}
		return guardRanges(x.ElseList)
	}
	return nil
}
