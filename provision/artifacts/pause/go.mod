module provision.local/pause

go 1.22
