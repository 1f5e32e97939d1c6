module fedifilter/multipartparsers

go 1.19
