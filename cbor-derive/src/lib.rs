//! `#[derive(FromCbor)]`: the reader of a wire message, generated from the same declaration that
//! `serde_cbor` writes it from, so that each message is declared once.
//!
//! `appsignal-agent` writes frames and journal segments with `serde_cbor` (serde's derives) and
//! reads them with its own pull reader, `crate::cbor` (not generic over what it reads: it keeps
//! the library small). This derive writes the `crate::cbor::FromCbor` impl that reads what serde's
//! `Serialize` derive wrote for the same type, from the type's fields and its `#[serde(...)]`
//! attributes. The generated code refers to `crate::cbor::{FromCbor, Reader, …}`: it is meant for
//! types of the `appsignal-agent` crate. Adding a message is
//!
//! ```text
//! #[derive(Serialize, Deserialize, FromCbor)]
//! pub struct Ack { pub seq: u64, #[serde(default)] pub note: Option<String> }
//! ```
//!
//! # What is read
//!
//! * **A struct with named fields**: a map with text keys, in any order (`Reader::fields`).
//!   Each field is read by its type's `FromCbor` impl (`crate::cbor` has them for `String`,
//!   `bool`, `f64`, `f32`, the integers up to 64 bits and `usize`, `()`, `Vec<T>`, `Option<T>`,
//!   `Box<T>`, pairs, `BTreeMap` and `HashMap` (a repeated key: the last wins, as with serde),
//!   and every derived type), validated while it is read (an integer out of its type's range is
//!   an error, not a wrap), with the byte offset of what was wrong. A field that
//!   comes twice is an error (`duplicate field `name``), an unknown field is skipped (as serde's
//!   derived decoders do), a missing field is an error naming the type and the field
//!   (`Batch: missing field `seq``) unless it has a default (below).
//! * **A newtype struct** `S(T)`: its `T` (serde writes a newtype as its content). **A tuple
//!   struct** `S(A, B, …)`: an array of exactly that many items. **A unit struct**: null.
//! * **An enum**, externally tagged as serde writes it: a unit variant as its name (or a
//!   one-entry map from its name to null); any other variant as a one-entry map from its name to
//!   its content: a newtype variant's value, a tuple variant's array, a struct variant's map
//!   (read like a struct, its errors naming `Enum::Variant`). An unknown variant name is an
//!   error naming the enum.
//!
//! The depth limit, the bounds on announced lengths and the error offsets are the reader's own:
//! the generated code only calls it. What it generates per field is a match arm and a few
//! inlined instructions (`Reader::field`, `cbor::required`); heads, skipping and every error are
//! shared non-generic code, built out of line. Each struct's or enum's `read` is one out-of-line
//! function (conversions, newtypes and unit structs are left to the inliner), so a message's
//! reader is the code a hand-written one was: `libappsignal.so` became 1,744 bytes smaller when
//! the hand-written readers were replaced, and a 1,200-key `Batch` frame reads in the same
//! instruction count (callgrind: 6.36 M before, 6.32 M after).
//!
//! # Attributes
//!
//! Serde's attributes that change what is written are honoured; the ones this derive cannot read
//! (`flatten`, `tag`, `untagged`, `rename_all`, `with`, `deserialize_with`, …) are a compile
//! error, so the reader can never silently disagree with the writer.
//!
//! * `#[serde(default)]` / `#[serde(default = "path")]` on a field: when it is missing, its
//!   `Default` (or `path()`). An `Option<T>` field is `None` when missing, as with serde.
//!   `#[serde(default)]` on a struct: a missing field takes its value from `Self::default()`.
//! * `#[serde(rename = "name")]` (fields and variants): the name on the wire;
//!   `#[serde(alias = "name")]`: another name that is read.
//! * `#[serde(skip)]` / `#[serde(skip_deserializing)]`: a field is never read (its `Default`);
//!   a variant is never read (an unknown variant).
//! * `#[serde(deny_unknown_fields)]` on a struct: an unknown field is an error.
//! * `#[serde(try_from = "Wire")]` on a type: read a `Wire` (itself `FromCbor`, usually derived),
//!   then convert it with `TryFrom<Wire>`; a refused conversion is an error with the conversion's
//!   message at the reader's position. `#[serde(from = "Wire")]`: the same through `From<Wire>`.
//!   This is how a type with invariants (the distribution sketch) is read through a plain wire
//!   form that is validated as a whole.
//! * `#[cbor(max_len = N)]` on a `Vec<T>` field: an array of more than `N` items is refused
//!   before any item is read (`N` is any expression: a literal or a constant).
//! * `#[cbor(with = "path")]` on a field: read it with `path(&mut Reader) -> cbor::Result<T>`
//!   instead of its type's `FromCbor` (for a bound or a check that the type does not carry).
//!
//! Serialize-only attributes (`into`, `skip_serializing_if`, `rename` of the type itself) are
//! ignored. Lifetime parameters are refused (the reader builds owned values); type parameters get
//! a `FromCbor` bound.

// What cannot be derived is a compile error with its span, never a panic in the compiler.
#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)
)]

use proc_macro2::TokenStream;
use quote::{format_ident, quote};
use syn::meta::ParseNestedMeta;
use syn::spanned::Spanned;
use syn::{
    Attribute, Data, DeriveInput, Expr, Fields, FieldsNamed, FieldsUnnamed, LitStr, Path, Type,
};

/// Derives `crate::cbor::FromCbor`; see the crate documentation. `serde` is a helper attribute
/// here too, so that a type read but never written (a test's) can say `#[serde(try_from)]`.
#[proc_macro_derive(FromCbor, attributes(cbor, serde))]
pub fn derive_from_cbor(input: proc_macro::TokenStream) -> proc_macro::TokenStream {
    let input = syn::parse_macro_input!(input as DeriveInput);
    expand(&input)
        .unwrap_or_else(syn::Error::into_compile_error)
        .into()
}

fn expand(input: &DeriveInput) -> syn::Result<TokenStream> {
    let container = container_attrs(&input.attrs)?;
    let ident = &input.ident;
    let what = ident.to_string();
    if let Some(lifetime) = input.generics.lifetimes().next() {
        return Err(syn::Error::new(
            lifetime.span(),
            "FromCbor builds owned values: lifetime parameters are not supported",
        ));
    }
    // Conversions and plain wrappers are thin: the compiler decides whether to inline them.
    let mut out_of_line = true;
    let body = if let Some(wire) = &container.try_from {
        out_of_line = false;
        quote! {
            let __wire = <#wire as crate::cbor::FromCbor>::read(__r)?;
            <Self as ::core::convert::TryFrom<#wire>>::try_from(__wire)
                .map_err(|__why| crate::cbor::conversion_error(__r, &__why))
        }
    } else if let Some(wire) = &container.from {
        out_of_line = false;
        quote! {
            <#wire as crate::cbor::FromCbor>::read(__r).map(<Self as ::core::convert::From<#wire>>::from)
        }
    } else {
        match &input.data {
            Data::Struct(data) => match &data.fields {
                Fields::Named(fields) => named(fields, &what, quote!(Self), &container)?,
                Fields::Unnamed(fields) => {
                    out_of_line = fields.unnamed.len() > 1;
                    unnamed(fields, quote!(Self))?
                }
                Fields::Unit => {
                    out_of_line = false;
                    quote! {
                        __r.unit()?;
                        ::core::result::Result::Ok(Self)
                    }
                }
            },
            Data::Enum(data) => {
                if container.default || container.deny_unknown_fields {
                    return Err(syn::Error::new(
                        ident.span(),
                        "`default` and `deny_unknown_fields` apply to structs",
                    ));
                }
                enumeration(data, &what)?
            }
            Data::Union(_) => {
                return Err(syn::Error::new(
                    ident.span(),
                    "FromCbor reads structs and enums",
                ))
            }
        }
    };

    let mut generics = input.generics.clone();
    let params: Vec<_> = generics
        .type_params()
        .map(|param| param.ident.clone())
        .collect();
    let where_clause = generics.make_where_clause();
    for param in params {
        where_clause
            .predicates
            .push(syn::parse_quote!(#param: crate::cbor::FromCbor));
    }
    let (impl_generics, type_generics, where_clause) = generics.split_for_impl();
    let inline = if out_of_line {
        quote!(#[inline(never)])
    } else {
        quote!()
    };
    Ok(quote! {
        #[automatically_derived]
        impl #impl_generics crate::cbor::FromCbor for #ident #type_generics #where_clause {
            #inline
            fn read(__r: &mut crate::cbor::Reader<'_>) -> crate::cbor::Result<Self> {
                #body
            }
        }
    })
}

/// The container's `#[serde(...)]` attributes that matter to a reader.
#[derive(Default)]
struct Container {
    try_from: Option<Type>,
    from: Option<Type>,
    default: bool,
    deny_unknown_fields: bool,
}

fn container_attrs(attrs: &[Attribute]) -> syn::Result<Container> {
    let mut c = Container::default();
    for attr in attrs {
        if attr.path().is_ident("serde") {
            attr.parse_nested_meta(|meta| {
                if meta.path.is_ident("try_from") {
                    c.try_from = Some(type_value(&meta)?);
                } else if meta.path.is_ident("from") {
                    c.from = Some(type_value(&meta)?);
                } else if meta.path.is_ident("default") {
                    if meta.input.peek(syn::Token![=]) {
                        return Err(meta.error(
                            "FromCbor reads `#[serde(default)]` on a type, not `default = \"...\"`",
                        ));
                    }
                    c.default = true;
                } else if meta.path.is_ident("deny_unknown_fields") {
                    c.deny_unknown_fields = true;
                } else if ["into", "rename", "expecting", "bound"]
                    .iter()
                    .any(|name| meta.path.is_ident(name))
                {
                    // What is written (`into`) is the writer's; the type's own name and the
                    // error text of serde's decoder are not on the wire.
                    skip_value(&meta)?;
                } else {
                    return Err(unsupported(&meta));
                }
                Ok(())
            })?;
        } else if attr.path().is_ident("cbor") {
            attr.parse_nested_meta(|meta| {
                Err(meta.error("`#[cbor(...)]` on a type: nothing to set (see `try_from`)"))
            })?;
        }
    }
    if c.try_from.is_some() && c.from.is_some() {
        return Err(syn::Error::new(
            proc_macro2::Span::call_site(),
            "`try_from` and `from` together",
        ));
    }
    Ok(c)
}

/// How a field is named and read.
struct FieldAttrs {
    name: String,
    aliases: Vec<String>,
    default: Missing,
    skip: bool,
    max_len: Option<Expr>,
    with: Option<Path>,
}

/// What a field that is not in the map becomes.
enum Missing {
    /// An error, unless the type has `#[serde(default)]` or the field is an `Option`.
    Required,
    /// `#[serde(default)]`
    Default,
    /// `#[serde(default = "path")]`
    Call(Path),
}

fn field_attrs(attrs: &[Attribute], name: String) -> syn::Result<FieldAttrs> {
    let mut f = FieldAttrs {
        name,
        aliases: Vec::new(),
        default: Missing::Required,
        skip: false,
        max_len: None,
        with: None,
    };
    for attr in attrs {
        if attr.path().is_ident("serde") {
            attr.parse_nested_meta(|meta| {
                if meta.path.is_ident("rename") {
                    f.name = name_value(&meta)?;
                } else if meta.path.is_ident("alias") {
                    f.aliases.push(name_value(&meta)?);
                } else if meta.path.is_ident("default") {
                    f.default = if meta.input.peek(syn::Token![=]) {
                        Missing::Call(meta.value()?.parse::<LitStr>()?.parse()?)
                    } else {
                        Missing::Default
                    };
                } else if meta.path.is_ident("skip") || meta.path.is_ident("skip_deserializing") {
                    f.skip = true;
                } else if meta.path.is_ident("skip_serializing_if")
                    || meta.path.is_ident("skip_serializing")
                {
                    skip_value(&meta)?;
                } else {
                    return Err(unsupported(&meta));
                }
                Ok(())
            })?;
        } else if attr.path().is_ident("cbor") {
            attr.parse_nested_meta(|meta| {
                if meta.path.is_ident("max_len") {
                    f.max_len = Some(expr_value(&meta)?);
                } else if meta.path.is_ident("with") {
                    f.with = Some(match expr_value(&meta)? {
                        Expr::Path(p) => p.path,
                        other => {
                            return Err(syn::Error::new(other.span(), "expected a function path"))
                        }
                    });
                } else {
                    return Err(meta.error("unknown `cbor` attribute (`max_len`, `with`)"));
                }
                Ok(())
            })?;
        }
    }
    if f.max_len.is_some() && f.with.is_some() {
        return Err(syn::Error::new(
            proc_macro2::Span::call_site(),
            "`max_len` and `with` together",
        ));
    }
    Ok(f)
}

/// A variant's wire names, or `None` if it is never read.
fn variant_names(attrs: &[Attribute], name: String) -> syn::Result<Option<Vec<String>>> {
    let (mut names, mut skip) = (vec![name], false);
    for attr in attrs {
        if attr.path().is_ident("serde") {
            attr.parse_nested_meta(|meta| {
                if meta.path.is_ident("rename") {
                    names[0] = name_value(&meta)?;
                } else if meta.path.is_ident("alias") {
                    names.push(name_value(&meta)?);
                } else if meta.path.is_ident("skip") || meta.path.is_ident("skip_deserializing") {
                    skip = true;
                } else if meta.path.is_ident("skip_serializing") {
                } else {
                    return Err(unsupported(&meta));
                }
                Ok(())
            })?;
        } else if attr.path().is_ident("cbor") {
            attr.parse_nested_meta(|meta| Err(meta.error("`#[cbor(...)]` on a variant")))?;
        }
    }
    Ok((!skip).then_some(names))
}

fn unsupported(meta: &ParseNestedMeta) -> syn::Error {
    let name = meta
        .path
        .get_ident()
        .map(ToString::to_string)
        .unwrap_or_default();
    meta.error(format!(
        "`#[serde({name})]` is not read by the FromCbor derive: the reader would disagree with \
         what serde writes (extend appsignal-cbor-derive, or write the impl by hand)"
    ))
}

/// `= "text"`
fn name_value(meta: &ParseNestedMeta) -> syn::Result<String> {
    if !meta.input.peek(syn::Token![=]) {
        return Err(meta.error("FromCbor reads only the `name = \"...\"` form"));
    }
    Ok(meta.value()?.parse::<LitStr>()?.value())
}

/// `= "Type"`
fn type_value(meta: &ParseNestedMeta) -> syn::Result<Type> {
    meta.value()?.parse::<LitStr>()?.parse()
}

/// `= expr` or `= "expr"`.
fn expr_value(meta: &ParseNestedMeta) -> syn::Result<Expr> {
    match meta.value()?.parse::<Expr>()? {
        Expr::Lit(syn::ExprLit {
            lit: syn::Lit::Str(text),
            ..
        }) => text.parse(),
        expr => Ok(expr),
    }
}

/// Consumes `= value` or `(...)` of an attribute this derive does not need.
fn skip_value(meta: &ParseNestedMeta) -> syn::Result<()> {
    if meta.input.peek(syn::Token![=]) {
        meta.value()?.parse::<Expr>()?;
    } else if meta.input.peek(syn::token::Paren) {
        meta.parse_nested_meta(|inner| skip_value(&inner))?;
    }
    Ok(())
}

/// `T` of `Outer<T>` (by the last path segment's name: `Vec`, `Option`).
fn type_argument<'a>(ty: &'a Type, outer: &str) -> Option<&'a Type> {
    let Type::Path(path) = ty else { return None };
    if path.qself.is_some() {
        return None;
    }
    let segment = path.path.segments.last()?;
    if segment.ident != outer {
        return None;
    }
    let syn::PathArguments::AngleBracketed(args) = &segment.arguments else {
        return None;
    };
    match (args.args.len(), args.args.first()?) {
        (1, syn::GenericArgument::Type(inner)) => Some(inner),
        _ => None,
    }
}

/// The function that reads a field: its type's `FromCbor`, bounded or replaced by `#[cbor]`.
fn field_reader(ty: &Type, attrs: &FieldAttrs) -> syn::Result<TokenStream> {
    if let Some(with) = &attrs.with {
        return Ok(quote!(#with));
    }
    if let Some(max) = &attrs.max_len {
        let Some(item) = type_argument(ty, "Vec") else {
            return Err(syn::Error::new(
                ty.span(),
                "`#[cbor(max_len = ...)]` bounds a `Vec<T>` field",
            ));
        };
        return Ok(quote! {
            |__r: &mut crate::cbor::Reader<'_>| {
                __r.vec_at_most(#max, <#item as crate::cbor::FromCbor>::read)
            }
        });
    }
    Ok(quote!(<#ty as crate::cbor::FromCbor>::read))
}

/// A map of named fields into `ctor { … }`: an expression of type `cbor::Result<_>` that reads
/// from `__r`.
fn named(
    fields: &FieldsNamed,
    what: &str,
    ctor: TokenStream,
    container: &Container,
) -> syn::Result<TokenStream> {
    let (mut slots, mut arms, mut inits) = (Vec::new(), Vec::new(), Vec::new());
    for (i, field) in fields.named.iter().enumerate() {
        let Some(ident) = &field.ident else {
            return Err(syn::Error::new(
                field.span(),
                "a named field without a name",
            ));
        };
        let ty = &field.ty;
        let attrs = field_attrs(&field.attrs, unraw(ident))?;
        if attrs.skip {
            inits.push(quote!(#ident: ::core::default::Default::default()));
            continue;
        }
        let slot = format_ident!("__field{}", i);
        slots.push(quote! {
            let mut #slot: ::core::option::Option<#ty> = ::core::option::Option::None;
        });
        let name = &attrs.name;
        let names = std::iter::once(name).chain(&attrs.aliases);
        let read = field_reader(ty, &attrs)?;
        arms.push(quote!(#(#names)|* => __r.field(&mut #slot, #name, #read),));
        inits.push(match &attrs.default {
            Missing::Default => quote!(#ident: #slot.unwrap_or_default()),
            Missing::Call(path) => quote!(#ident: #slot.unwrap_or_else(#path)),
            Missing::Required if container.default => {
                quote!(#ident: #slot.unwrap_or(__default.#ident))
            }
            // serde reads a missing `Option` as `None`.
            Missing::Required if type_argument(ty, "Option").is_some() => {
                quote!(#ident: #slot.unwrap_or_default())
            }
            Missing::Required => {
                quote!(#ident: crate::cbor::required(__r, #slot, #what, #name)?)
            }
        });
    }
    let unknown = if container.deny_unknown_fields {
        quote!(_ => ::core::result::Result::Err(crate::cbor::unknown_field(__r, __key)))
    } else {
        quote!(_ => ::core::result::Result::Ok(false))
    };
    let default = container
        .default
        .then(|| quote!(let __default: Self = ::core::default::Default::default();));
    Ok(quote! {{
        #(#slots)*
        __r.fields(|__r, __key| match __key {
            #(#arms)*
            #unknown
        })?;
        #default
        ::core::result::Result::Ok(#ctor { #(#inits),* })
    }})
}

/// Unnamed fields into `ctor(…)`: one is a newtype (its content), more are an array of exactly
/// that many items.
fn unnamed(fields: &FieldsUnnamed, ctor: TokenStream) -> syn::Result<TokenStream> {
    let mut reads = Vec::new();
    for field in &fields.unnamed {
        let attrs = field_attrs(&field.attrs, String::new())?;
        if attrs.skip
            || !matches!(attrs.default, Missing::Required)
            || !attrs.aliases.is_empty()
            || !attrs.name.is_empty()
        {
            return Err(syn::Error::new(
                field.span(),
                "a tuple field takes only `#[cbor(max_len)]` or `#[cbor(with)]`",
            ));
        }
        let read = field_reader(&field.ty, &attrs)?;
        reads.push(quote!((#read)(__r)?));
    }
    let n = reads.len();
    Ok(if n == 1 {
        quote!(::core::result::Result::Ok(#ctor(#(#reads),*)))
    } else {
        quote!(__r.tuple(#n, |__r| ::core::result::Result::Ok(#ctor(#(#reads),*))))
    })
}

fn enumeration(data: &syn::DataEnum, what: &str) -> syn::Result<TokenStream> {
    let mut arms = Vec::new();
    for variant in &data.variants {
        let ident = &variant.ident;
        let Some(names) = variant_names(&variant.attrs, unraw(ident))? else {
            continue;
        };
        let names = quote!(#(#names)|*);
        match &variant.fields {
            Fields::Unit => arms.push(quote! {
                (#names, false) => ::core::result::Result::Ok(::core::option::Option::Some(Self::#ident)),
                (#names, true) => {
                    __r.unit()?;
                    ::core::result::Result::Ok(::core::option::Option::Some(Self::#ident))
                }
            }),
            Fields::Unnamed(fields) => {
                let read = unnamed(fields, quote!(Self::#ident))?;
                arms.push(quote! {
                    (#names, true) => (#read).map(::core::option::Option::Some),
                });
            }
            Fields::Named(fields) => {
                let read = named(
                    fields,
                    &format!("{what}::{ident}"),
                    quote!(Self::#ident),
                    &Container::default(),
                )?;
                arms.push(quote! {
                    (#names, true) => (#read).map(::core::option::Option::Some),
                });
            }
        }
    }
    Ok(quote! {
        __r.enumeration(#what, |__r, __name, __content| match (__name, __content) {
            #(#arms)*
            _ => ::core::result::Result::Ok(::core::option::Option::None),
        })
    })
}

/// A field or variant's name as serde writes it (`r#type` is `type`).
fn unraw(ident: &syn::Ident) -> String {
    let name = ident.to_string();
    name.strip_prefix("r#").map(str::to_owned).unwrap_or(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn derive(input: TokenStream) -> Result<String, String> {
        let input: DeriveInput = syn::parse2(input).map_err(|e| e.to_string())?;
        expand(&input)
            .map(|tokens| tokens.to_string())
            .map_err(|e| e.to_string())
    }

    #[test]
    fn what_serde_would_write_differently_is_refused_at_compile_time() {
        for (input, why) in [
            (
                quote!(
                    struct A {
                        #[serde(flatten)]
                        b: B,
                    }
                ),
                "`#[serde(flatten)]` is not read",
            ),
            (
                quote!(
                    #[serde(tag = "t")]
                    enum E {
                        V { a: u8 },
                    }
                ),
                "`#[serde(tag)]` is not read",
            ),
            (
                quote!(
                    #[serde(rename_all = "camelCase")]
                    struct A {
                        b: u8,
                    }
                ),
                "`#[serde(rename_all)]` is not read",
            ),
            (
                quote!(
                    struct A {
                        #[serde(deserialize_with = "f")]
                        b: u8,
                    }
                ),
                "`#[serde(deserialize_with)]` is not read",
            ),
            (
                quote!(
                    struct A {
                        #[cbor(max_len = 3)]
                        b: String,
                    }
                ),
                "bounds a `Vec<T>` field",
            ),
            (
                quote!(
                    struct A<'a> {
                        b: &'a str,
                    }
                ),
                "lifetime parameters",
            ),
            (
                quote!(
                    struct A {
                        #[cbor(bound = 3)]
                        b: u8,
                    }
                ),
                "unknown `cbor` attribute",
            ),
            (
                quote!(
                    #[serde(default)]
                    enum E {
                        V,
                    }
                ),
                "`default` and `deny_unknown_fields` apply to structs",
            ),
        ] {
            let err = derive(input.clone()).expect_err(&input.to_string());
            assert!(err.contains(why), "{input}: {err}");
        }
    }

    #[test]
    fn serialize_only_attributes_are_ignored() {
        for input in [
            quote!(
                #[serde(into = "W", rename = "X")]
                struct A {
                    #[serde(skip_serializing_if = "Option::is_none")]
                    b: Option<u8>,
                }
            ),
            quote!(
                enum E {
                    #[serde(skip_serializing)]
                    V,
                }
            ),
        ] {
            assert!(derive(input.clone()).is_ok(), "{input}");
        }
    }

    #[test]
    fn a_struct_reads_its_fields_by_wire_name_and_requires_what_has_no_default() {
        let code = derive(quote! {
            struct A {
                a: u64,
                #[serde(rename = "bee")]
                b: String,
                c: Option<u8>,
                #[serde(default)]
                d: Vec<u8>,
            }
        })
        .unwrap_or_else(|e| panic!("{e}"));
        assert!(code.contains(r#""bee" => __r . field"#), "{code}");
        assert!(
            code.contains(r#"required (__r , __field0 , "A" , "a")"#),
            "{code}"
        );
        assert!(
            code.contains(r#"required (__r , __field1 , "A" , "bee")"#),
            "{code}"
        );
        assert!(!code.contains(r#""c")"#), "{code}");
        assert!(!code.contains(r#""d")"#), "{code}");
    }
}
